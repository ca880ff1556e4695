//! Random command sequences never break the order's invariants.
//!
//! A small linear congruential generator (no extra crates, fully deterministic) drives many
//! seeds of command sequences against one order, valid and invalid alike. After every decision
//! the test checks the rules that must hold whatever the caller does: refunds never exceed what
//! was paid, the version counts events, tickets never exceed quantities, finished orders stay
//! finished, deciding never mutates, every success is idempotent on repeat, and events survive a
//! JSON round trip. A final tally proves the generator reached every event type and status.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use common::*;
use order_domain::commands::*;
use order_domain::values::{DisputeOutcome, NewLineItem, RefundState};
use order_domain::{Order, OrderCommand, OrderError, OrderEvent, OrderStatus};
use uuid::Uuid;

const SEEDS: u64 = 3_000;
const STEPS: usize = 60;

/// Knuth's MMIX LCG; the high bits are good enough to pick commands.
#[derive(Debug)]
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        let mut rng = Self(seed ^ 0x9e37_79b9_7f4a_7c15);
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, options: &'a [T]) -> &'a T {
        &options[self.below(options.len() as u64) as usize]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

const INTENTS: [&str; 3] = [INTENT, OTHER_INTENT, ""];
const DISPUTES: [&str; 3] = [DISPUTE, OTHER_DISPUTE, " "];
const DISPUTE_STATUSES: [&str; 3] = ["open", "under_review", "needs_response"];
const TICKET_IDS: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", ""];

fn refund_id(rng: &mut Lcg) -> Uuid {
    Uuid::from_u128(u128::from(rng.below(4)) + 1)
}

/// A refund id of the order's own, or now and then the return of a rejected payment.
fn owed_refund_id(rng: &mut Lcg, order: &Order) -> Uuid {
    if !order.rejected_payments.is_empty() && rng.chance(2) {
        let ids: Vec<Uuid> = order
            .rejected_payments
            .iter()
            .map(|p| p.refund_id)
            .collect();
        *rng.pick(&ids)
    } else {
        refund_id(rng)
    }
}

fn random_create(rng: &mut Lcg, now: DateTime<Utc>) -> OrderCommand {
    let lines = rng.below(3) + 1;
    let items = (0..lines)
        .map(|i| NewLineItem {
            // Now and then a duplicate id, to exercise the refusal.
            id: Uuid::from_u128(u128::from(if rng.chance(20) { 0 } else { i }) + 0x100),
            ticket_type_id: TYPE_A,
            quantity: *rng.pick(&[1, 1, 2, 3, 5, 50, 0, 51]),
            unit_price_cents: *rng.pick(&[0, 1, 999, 5_000, 12_345, -1]),
        })
        .collect();
    OrderCommand::CreateOrder(CreateOrder {
        items,
        fees_cents: *rng.pick(&[0, 0, 150, 999, -5]),
        tax_cents: *rng.pick(&[0, 0, 80, 1_234]),
        expires_at: now + Duration::minutes(*rng.pick(&[15, 15, 30, 0])),
        now,
        ..create_cmd()
    })
}

fn random_command(rng: &mut Lcg, order: &Order, now: DateTime<Utc>) -> OrderCommand {
    use OrderCommand as C;
    // Weighted so that paid orders, refunds and disputes come up often.
    let roll = rng.below(32);
    match roll {
        0 => random_create(rng, now),
        1 => C::ReserveOrder(ReserveOrder {
            expires_at: now + Duration::minutes(rng.below(40) as i64 - 2),
            now,
        }),
        2..=5 => C::ConfirmOrder(ConfirmOrder {
            payment_intent_id: (*rng.pick(&INTENTS)).to_owned(),
            amount_cents: order.total_cents + *rng.pick(&[0, 0, 0, 0, 1, -1]),
            expected_version: match rng.below(4) {
                0 => Some(order.version),
                1 => Some(rng.below(6)),
                _ => None,
            },
            now,
        }),
        6 => C::CancelOrder(CancelOrder {
            reason: "r".to_owned(),
            now,
        }),
        7 => C::ExpireOrder(ExpireOrder { now }),
        8 => C::FailOrder(FailOrder {
            reason: "r".to_owned(),
            now,
        }),
        9 => C::RecordPaymentFailure(RecordPaymentFailure {
            payment_intent_id: (*rng.pick(&INTENTS)).to_owned(),
            reason: "declined".to_owned(),
            now,
        }),
        10..=13 | 28..=30 => C::RequestRefund(RequestRefund {
            refund_id: refund_id(rng),
            amount_cents: match rng.below(8) {
                0 | 1 => None,
                2 => Some(*rng.pick(&[-1, 0])),
                3 => Some(order.total_cents + 1),
                4 => Some(order.refundable_cents()),
                _ => Some(*rng.pick(&[1, 500, 3_000, 7_777])),
            },
            reason: "r".to_owned(),
            facts: RefundFacts {
                refusals: if rng.chance(8) {
                    vec!["ticket transferred".to_owned()]
                } else {
                    vec![]
                },
            },
            now,
        }),
        14 | 15 | 31 => C::CompleteRefund(CompleteRefund {
            refund_id: owed_refund_id(rng, order),
            now,
        }),
        16 => C::FailRefund(FailRefund {
            refund_id: owed_refund_id(rng, order),
            reason: "r".to_owned(),
            now,
        }),
        17 | 18 => C::OpenDispute(OpenDispute {
            dispute_id: (*rng.pick(&DISPUTES)).to_owned(),
            amount_cents: None,
            reason: None,
            now,
        }),
        19 => C::UpdateDispute(UpdateDispute {
            dispute_id: (*rng.pick(&DISPUTES)).to_owned(),
            status: (*rng.pick(&DISPUTE_STATUSES)).to_owned(),
            now,
        }),
        20 | 21 => C::CloseDispute(CloseDispute {
            dispute_id: (*rng.pick(&DISPUTES)).to_owned(),
            outcome: if rng.chance(3) {
                DisputeOutcome::Lost
            } else {
                DisputeOutcome::Won
            },
            now,
        }),
        22 | 23 => {
            let n = rng.below(4) + 1;
            let item_ids: Vec<Uuid> = order.items.iter().map(|i| i.id).collect();
            let tickets = (0..n)
                .map(|_| {
                    // Mostly known items; the unknown one now and then.
                    let item_id = if item_ids.is_empty() || rng.chance(10) {
                        UNKNOWN_ITEM
                    } else {
                        *rng.pick(&item_ids)
                    };
                    let ticket_id: &&str = rng.pick(&TICKET_IDS);
                    ticket(item_id, ticket_id)
                })
                .collect::<Vec<_>>();
            record_tickets_at(&tickets, now)
        }
        24 => C::SendReminder(SendReminder { now }),
        25 => C::SendEventReminder(SendEventReminder { now }),
        26 if rng.chance(3) => C::ArchiveOrder(ArchiveOrder { now }),
        27 => C::SettlePayment(SettlePayment {
            payment_intent_id: (*rng.pick(&INTENTS)).to_owned(),
            amount_cents: order.total_cents + *rng.pick(&[0, 0, 0, 1, -1]),
            currency: rng
                .pick(&[Some("USD"), Some("usd"), Some("EUR"), None])
                .map(str::to_owned),
            now,
        }),
        _ => C::ConfirmOrder(ConfirmOrder {
            payment_intent_id: INTENT.to_owned(),
            amount_cents: order.total_cents,
            expected_version: None,
            now,
        }),
    }
}

fn record_tickets_at(
    tickets: &[order_domain::values::IssuedTicket],
    now: DateTime<Utc>,
) -> OrderCommand {
    OrderCommand::RecordTickets(RecordTickets {
        tickets: tickets.to_vec(),
        now,
    })
}

/// Rules that hold for every order, whatever happened to it.
fn check_state(order: &Order, applied: &[OrderEvent], ctx: &str) {
    assert_eq!(order.version, applied.len() as u64, "{ctx}: version");
    if !order.exists() {
        assert!(applied.is_empty(), "{ctx}: events without an order");
        return;
    }
    // Money.
    let subtotal: i64 = order
        .items
        .iter()
        .map(|i| i.line_total_cents().unwrap())
        .sum();
    assert_eq!(order.subtotal_cents, subtotal, "{ctx}: subtotal");
    assert_eq!(
        order.total_cents,
        subtotal + order.fees_cents + order.tax_cents,
        "{ctx}: total"
    );
    assert!(order.refunded_cents >= 0, "{ctx}: negative refunded");
    assert!(
        order.refunded_cents <= order.total_cents,
        "{ctx}: refunded {} > total {}",
        order.refunded_cents,
        order.total_cents
    );
    assert!(order.refundable_cents() >= 0, "{ctx}: refundable < 0");
    assert!(
        order.refunded_cents + order.pending_refund_cents() <= order.total_cents,
        "{ctx}: refunded + pending exceeds the total"
    );
    let completed: i64 = order
        .refunds
        .iter()
        .filter(|r| r.state == RefundState::Completed)
        .map(|r| r.amount_cents)
        .sum();
    assert_eq!(
        order.refunded_cents, completed,
        "{ctx}: refunded != completed refunds"
    );
    assert!(
        order.refunds.iter().all(|r| r.amount_cents > 0),
        "{ctx}: empty refund"
    );
    let ids: BTreeSet<Uuid> = order.refunds.iter().map(|r| r.refund_id).collect();
    assert_eq!(ids.len(), order.refunds.len(), "{ctx}: refund id twice");

    // Status.
    assert_eq!(
        order.status.is_paid(),
        order.payment_intent_id.is_some(),
        "{ctx}: paid status without an intent, or the reverse"
    );
    if order.status.is_paid() {
        let expected = if order.refunded_cents == 0 {
            OrderStatus::Paid
        } else if order.refunded_cents == order.total_cents {
            OrderStatus::Refunded
        } else {
            OrderStatus::PartiallyRefunded
        };
        assert_eq!(order.status, expected, "{ctx}: status vs refunded amount");
    } else {
        assert!(order.refunds.is_empty(), "{ctx}: refund on an unpaid order");
        assert!(
            order.tickets.is_empty(),
            "{ctx}: tickets on an unpaid order"
        );
    }

    // Rejected payments: each intent once, never the intent the order is paid with, keyed by
    // the refund id derived from it, and never counted in the order's own refunds.
    let intents: BTreeSet<&str> = order
        .rejected_payments
        .iter()
        .map(|p| p.payment_intent_id.as_str())
        .collect();
    assert_eq!(
        intents.len(),
        order.rejected_payments.len(),
        "{ctx}: a payment rejected twice"
    );
    if let Some(paid_with) = order.payment_intent_id.as_deref() {
        assert!(
            !intents.contains(paid_with),
            "{ctx}: paid with an intent that is being returned"
        );
    }
    for p in &order.rejected_payments {
        assert!(p.amount_cents > 0, "{ctx}: empty rejected payment");
        assert_eq!(
            Some(p.refund_id),
            order
                .id
                .map(|id| Order::rejected_payment_refund_id(id, &p.payment_intent_id)),
            "{ctx}: rejected payment under a foreign refund id"
        );
    }

    // Tickets.
    let quantity: u32 = order.items.iter().map(|i| i.quantity).sum();
    assert!(
        order.ticket_count() <= quantity,
        "{ctx}: tickets beyond quantity"
    );
    let mut per_item: BTreeMap<Uuid, u32> = BTreeMap::new();
    let mut ticket_ids = BTreeSet::new();
    for t in &order.tickets {
        assert!(
            ticket_ids.insert(&t.ticket_id),
            "{ctx}: ticket {} twice",
            t.ticket_id
        );
        assert!(!t.ticket_id.trim().is_empty(), "{ctx}: blank ticket id");
        *per_item.entry(t.item_id).or_default() += 1;
    }
    for (item_id, n) in per_item {
        let item = order.items.iter().find(|i| i.id == item_id);
        let item = item.unwrap_or_else(|| panic!("{ctx}: ticket on unknown item {item_id}"));
        assert!(
            n <= item.quantity,
            "{ctx}: item {item_id} over its quantity"
        );
    }

    // Archiving.
    if order.archived {
        assert!(!order.status.is_open(), "{ctx}: archived while open");
        assert_eq!(
            order.pending_refund_cents(),
            0,
            "{ctx}: archived with a refund under way"
        );
        assert!(
            order.open_disputes.is_empty(),
            "{ctx}: archived with a dispute open"
        );
    }

    // Disputes.
    for id in order.open_disputes.keys() {
        assert!(
            order.dispute_history.contains(id),
            "{ctx}: open dispute not in history"
        );
    }
    assert_eq!(
        order.refunds_locked(),
        order.lost_dispute || !order.open_disputes.is_empty(),
        "{ctx}: refund lock"
    );
}

/// Rules about one decision, given the order before it.
fn check_decision(
    before: &Order,
    command: &OrderCommand,
    events: &[OrderEvent],
    after: &Order,
    ctx: &str,
) {
    if before.archived {
        // Only money that arrives after archiving moves it: a rejected payment and its return.
        assert!(
            events.iter().all(|e| matches!(
                e,
                OrderEvent::PaymentRejected(_)
                    | OrderEvent::PaymentReturned(_)
                    | OrderEvent::PaymentReturnFailed(_)
            )),
            "{ctx}: an archived order changed"
        );
        assert_eq!(
            after.status, before.status,
            "{ctx}: an archived order changed status"
        );
    }
    if before.status.is_terminal() {
        assert_eq!(
            after.status, before.status,
            "{ctx}: a finished order changed status"
        );
    }
    assert!(
        !before.archived || after.archived,
        "{ctx}: an archived order was unarchived"
    );
    for e in events {
        if matches!(e, OrderEvent::RefundRequested(_)) {
            assert!(!before.refunds_locked(), "{ctx}: refund while locked");
            assert!(
                matches!(
                    before.status,
                    OrderStatus::Paid | OrderStatus::PartiallyRefunded
                ),
                "{ctx}: refund from {:?}",
                before.status
            );
        }
        if let OrderEvent::OrderConfirmed(c) = e {
            assert_eq!(
                c.amount_cents, before.total_cents,
                "{ctx}: confirmed amount"
            );
        }
        if let OrderEvent::OrderArchived(a) = e {
            assert_eq!(a.final_status, before.status, "{ctx}: archived status");
            assert!(!before.status.is_open(), "{ctx}: archived an open order");
        }
        let json = serde_json::to_value(e).unwrap();
        let back: OrderEvent = serde_json::from_value(json).unwrap();
        assert_eq!(&back, e, "{ctx}: JSON round trip");
        assert!(
            OrderEvent::TYPES.contains(&e.event_type()),
            "{ctx}: unknown type"
        );
    }
    if !events.is_empty() {
        // Every accepted command is idempotent: sent again, it changes nothing.
        let again = after.decide(command.clone());
        let expected = if matches!(command, OrderCommand::CreateOrder(_)) {
            Err(OrderError::AlreadyExists)
        } else {
            Ok(vec![])
        };
        assert_eq!(again, expected, "{ctx}: repeat of {command:?}");
    }
}

#[derive(Debug, Default)]
struct Tally {
    events: BTreeMap<&'static str, usize>,
    statuses: BTreeSet<&'static str>,
    errors: BTreeSet<String>,
    no_ops: usize,
}

fn run(seed: u64, tally: &mut Tally) {
    let mut rng = Lcg::new(seed);
    let mut clock = t(0);
    let mut order = Order::default();
    let mut applied: Vec<OrderEvent> = Vec::new();
    for step in 0..STEPS {
        clock += Duration::seconds(rng.below(150) as i64);
        let command = if step == 0 && !rng.chance(10) {
            create_with(|c| c.now = clock)
        } else if step == 0 {
            random_create(&mut rng, clock)
        } else {
            random_command(&mut rng, &order, clock)
        };
        let ctx = format!("seed {seed} step {step}");
        let before = order.clone();
        let result = order.decide(command.clone());
        assert_eq!(order, before, "{ctx}: decide mutated the order");
        match result {
            Ok(events) => {
                for e in &events {
                    order.apply(e);
                    *tally.events.entry(e.event_type()).or_default() += 1;
                }
                if events.is_empty() {
                    tally.no_ops += 1;
                }
                applied.extend(events.iter().cloned());
                check_decision(&before, &command, &events, &order, &ctx);
            }
            Err(e) => {
                if !order.exists() {
                    assert!(
                        matches!(command, OrderCommand::CreateOrder(_))
                            || e == OrderError::NotFound,
                        "{ctx}: {e:?} for a missing order"
                    );
                }
                let name = format!("{e:?}");
                tally
                    .errors
                    .insert(name.split([' ', '(']).next().unwrap().to_owned());
            }
        }
        check_state(&order, &applied, &ctx);
        if order.exists() {
            tally.statuses.insert(order.status.as_str());
        }
    }
    // The state is a pure fold of the events, also after they went through JSON.
    let stored: Vec<OrderEvent> = applied
        .iter()
        .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
        .collect();
    assert_eq!(replay(&stored), order, "seed {seed}: replay differs");
}

#[test]
fn random_command_sequences_never_break_the_invariants() {
    let mut tally = Tally::default();
    for seed in 0..SEEDS {
        run(seed, &mut tally);
    }
    // The generator must actually reach the interesting corners, or the test proves little.
    for name in OrderEvent::TYPES {
        assert!(
            tally.events.get(name).copied().unwrap_or(0) > 0,
            "no {name} in {SEEDS} seeds: {:?}",
            tally.events
        );
    }
    for status in OrderStatus::ALL {
        assert!(
            tally.statuses.contains(status.as_str()),
            "never reached {status}: {:?}",
            tally.statuses
        );
    }
    for error in [
        "RefundExceedsRemaining",
        "RefundsLocked",
        "NothingToRefund",
        "TooManyTickets",
        "TicketOnOtherItem",
        "VersionMismatch",
        "PaidWithOtherIntent",
        "Archived",
        "RefundNotEligible",
    ] {
        assert!(
            tally.errors.contains(error),
            "never refused with {error}: {:?}",
            tally.errors
        );
    }
    assert!(tally.no_ops > 0, "no idempotent repeat was generated");
}

#[test]
fn the_generator_is_deterministic() {
    let mut a = Lcg::new(42);
    let mut b = Lcg::new(42);
    let xs: Vec<u64> = (0..100).map(|_| a.next()).collect();
    let ys: Vec<u64> = (0..100).map(|_| b.next()).collect();
    assert_eq!(xs, ys);
    let mut c = Lcg::new(43);
    assert_ne!(xs[..10], (0..10).map(|_| c.next()).collect::<Vec<_>>()[..]);
}
