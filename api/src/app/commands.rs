//! The command use cases (docs/contract.md §3.3): create, reserve, confirm, cancel, refund and
//! record tickets. Each takes input already parsed into domain types, sends one command through
//! the [`OrderStore`] (the refund, through the saga), and gives back the order as the command
//! left it, so the caller reads its own write before projections catch up.
//!
//! Every use case but the refund takes the request's pending replay key, if signed, and hands
//! it to the store, whose append records it (see [`crate::auth::pending`]).
//!
//! Creation owns the idempotency rule: with a key, the order id derives from the tenant and the
//! key, so the event store's primary key makes "create unless it exists" atomic and a repeat
//! survives restarts with no extra table; the first answer is rebuilt from the stored
//! `OrderCreated` and the request hash in its metadata.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use order_domain::commands::{CancelOrder, ConfirmOrder, CreateOrder, RecordTickets, ReserveOrder};
use order_domain::values::{IssuedTicket, NewLineItem};
use order_domain::{Currency, Order, OrderCommand};
use order_projections::OrderView;
use serde_json::Value;
use uuid::Uuid;

use crate::app::context::RequestContext;
use crate::app::error::{AppError, AppResult};
use crate::app::refund::{RefundRequest, RefundSaga, Settled};
use crate::app::store::{Created, OrderStore};
use crate::auth::PendingNonce;
use crate::clients::ServiceClients;

/// Namespace of order ids derived from `(tenant, Idempotency-Key)`.
const IDEMPOTENT_ORDER_NS: Uuid = Uuid::from_u128(0x04de_0000_0000_0000_0000_0000_0000_0001);
/// Namespace of line-item ids derived from `(order id, position)`.
const ITEM_NS: Uuid = Uuid::from_u128(0x17e3_0000_0000_0000_0000_0000_0000_0002);
/// Namespace of refund ids derived from `(order id, Idempotency-Key)`.
const REFUND_NS: Uuid = Uuid::from_u128(0x0ef0_0000_0000_0000_0000_0000_0000_0003);

/// Who asks: the metadata their commands' events carry, and the tenant they are scoped to
/// (another tenant's order does not exist for them).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub metadata: HashMap<String, String>,
    pub tenant: Option<String>,
}

impl Origin {
    /// A request's origin: who asked (`actor`), on whose behalf, and which request and trace
    /// it belongs to.
    pub fn of_request(ctx: &RequestContext, actor: &str) -> Self {
        let mut m = HashMap::from([
            ("requestId".to_owned(), ctx.request_id.clone()),
            ("traceId".to_owned(), ctx.trace_id.clone()),
            ("correlationId".to_owned(), ctx.request_id.clone()),
            ("causationId".to_owned(), ctx.request_id.clone()),
            ("actor".to_owned(), actor.to_owned()),
        ]);
        if let Some(tp) = &ctx.traceparent {
            m.insert("traceparent".to_owned(), tp.clone());
        }
        if let Some(t) = &ctx.tenant_id {
            m.insert("tenantId".to_owned(), t.clone());
        }
        if let Some(u) = &ctx.user_id {
            m.insert("userId".to_owned(), u.clone());
        }
        Self {
            metadata: m,
            tenant: ctx.tenant_id.clone(),
        }
    }

    /// Orders of another tenant do not exist for an origin scoped to a tenant.
    fn guard(&self) -> impl Fn(&Order) -> AppResult<()> + '_ {
        move |order: &Order| match &self.tenant {
            Some(t) if order.exists() && *t != order.tenant_id => Err(AppError::order_not_found()),
            _ => Ok(()),
        }
    }
}

/// One requested line of a new order; its id derives from the order id and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLine {
    pub ticket_type_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// A new order as the caller asked for it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub tenant: String,
    /// With a key, a repeat of the same request answers the first answer again.
    pub idempotency_key: Option<String>,
    /// What a repeat is compared with: a digest of the request as sent.
    pub request_hash: String,
    pub user_id: String,
    pub event_id: Uuid,
    pub currency: Currency,
    pub lines: Vec<NewLine>,
    pub fees_cents: i64,
    pub tax_cents: i64,
    /// How long the order is held from now.
    pub hold: Duration,
    pub event_starts_at: Option<DateTime<Utc>>,
}

/// What a confirm asks.
#[derive(Debug, Clone)]
pub struct Confirmation {
    pub payment_intent_id: String,
    pub amount_cents: i64,
    pub expected_version: Option<u64>,
}

/// Where a refund stands after the request that asked for it.
#[derive(Debug, Clone)]
pub struct RefundOutcome {
    pub order: OrderView,
    pub refund_id: Uuid,
    /// `true` once the money went back; `false` while payment-service is still processing.
    pub completed: bool,
    pub amount_cents: Option<i64>,
}

/// The command use cases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Commands {
    store: OrderStore,
    clients: ServiceClients,
}

impl Commands {
    /// Commands over the event store, with the peers the refund saga asks.
    pub fn new(store: OrderStore, clients: ServiceClients) -> Self {
        Self { store, clients }
    }

    /// Places an order. A repeat of an idempotency key with the same request answers the first
    /// answer again, even if deciding it again today would fail (an event that has started
    /// since, say): the key promises the first answer.
    ///
    /// # Errors
    /// The domain's refusal; [`AppError::KeyReused`] for a key used with another request;
    /// [`AppError::ConcurrentWrite`] when the id is taken without a key to explain it.
    pub async fn create(
        &self,
        origin: &Origin,
        nonce: Option<PendingNonce>,
        new: NewOrder,
    ) -> AppResult<OrderView> {
        let key = new.idempotency_key.clone();
        let order_id = match &key {
            Some(k) => Uuid::new_v5(
                &IDEMPOTENT_ORDER_NS,
                format!("{}\n{k}", new.tenant).as_bytes(),
            ),
            None => Uuid::now_v7(),
        };
        let mut meta = origin.metadata.clone();
        meta.insert("requestHash".to_owned(), new.request_hash.clone());
        if let Some(k) = &key {
            meta.insert("idempotencyKey".to_owned(), k.clone());
        }
        let now = Utc::now();
        let items = new
            .lines
            .iter()
            .enumerate()
            .map(|(i, line)| NewLineItem {
                id: Uuid::new_v5(&ITEM_NS, format!("{order_id}:{i}").as_bytes()),
                ticket_type_id: line.ticket_type_id,
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            })
            .collect();
        let order_number = format!(
            "ORD-{}-{}",
            now.format("%Y%m%d"),
            &order_id.simple().to_string().to_uppercase()[26..]
        );
        let command = OrderCommand::CreateOrder(CreateOrder {
            order_id,
            order_number,
            tenant_id: new.tenant,
            user_id: new.user_id,
            event_id: new.event_id,
            currency: new.currency,
            items,
            fees_cents: new.fees_cents,
            tax_cents: new.tax_cents,
            expires_at: now + new.hold,
            event_starts_at: new.event_starts_at,
            now,
        });
        // Append first, read only on a repeat: the primary key on (order id, sequence 1) makes
        // "create unless it exists" atomic, so the common case is one round trip. A repeat
        // leaves the request's key unsettled: the first answer is only read, and whoever
        // settles the key (the auth middleware) does so before the answer leaves.
        let created = match self.store.create(order_id, &meta, command, nonce).await {
            Ok(created) => created,
            // A domain refusal of a repeat (an event that has started since, say) still gets the
            // first answer. Not a failed append: it may have committed, and its caller must be
            // told to retry (its key is then in doubt), nor a replay, which is refused outright.
            Err(refused @ (AppError::Invalid(_) | AppError::Rejected(_))) if key.is_some() => {
                return match self.first_answer(order_id, &new.request_hash).await? {
                    Some(first) => Ok(first),
                    None => Err(refused),
                };
            }
            Err(e) => return Err(e),
        };
        match created {
            Created::New(done) => view_of(&done.order),
            // A repeat of the key, or two requests with one key raced: answer like the first.
            Created::AlreadyExists if key.is_some() => self
                .first_answer(order_id, &new.request_hash)
                .await?
                .ok_or(AppError::ConcurrentWrite),
            Created::AlreadyExists => Err(AppError::ConcurrentWrite),
        }
    }

    /// For an idempotent create: the first answer (the order right after `OrderCreated`) if the
    /// order exists and was created from the same request; [`AppError::KeyReused`] if from
    /// another.
    async fn first_answer(
        &self,
        order_id: Uuid,
        request_hash: &str,
    ) -> AppResult<Option<OrderView>> {
        let history = self.store.history(order_id).await?;
        let Some(first) = history.first() else {
            return Ok(None);
        };
        if first.metadata.get("requestHash").and_then(Value::as_str) != Some(request_hash) {
            return Err(AppError::KeyReused(
                "this Idempotency-Key was already used with a different request body".into(),
            ));
        }
        let event = serde_json::from_value(first.payload.clone()).map_err(AppError::internal)?;
        let mut order = Order::default();
        order.apply(&event);
        view_of(&order).map(Some)
    }

    /// Holds the tickets for `hold` from now.
    ///
    /// # Errors
    /// The domain's refusal, or the store's.
    pub async fn reserve(
        &self,
        id: Uuid,
        origin: &Origin,
        nonce: Option<PendingNonce>,
        hold: Duration,
    ) -> AppResult<OrderView> {
        let expires_at = Utc::now() + hold;
        self.execute(id, origin, nonce, || {
            OrderCommand::ReserveOrder(ReserveOrder {
                expires_at,
                now: Utc::now(),
            })
        })
        .await
    }

    /// Marks the order paid.
    ///
    /// # Errors
    /// The domain's refusal, or the store's.
    pub async fn confirm(
        &self,
        id: Uuid,
        origin: &Origin,
        nonce: Option<PendingNonce>,
        confirmation: Confirmation,
    ) -> AppResult<OrderView> {
        self.execute(id, origin, nonce, || {
            OrderCommand::ConfirmOrder(ConfirmOrder {
                payment_intent_id: confirmation.payment_intent_id.clone(),
                amount_cents: confirmation.amount_cents,
                expected_version: confirmation.expected_version,
                now: Utc::now(),
            })
        })
        .await
    }

    /// Cancels an unpaid order.
    ///
    /// # Errors
    /// The domain's refusal, or the store's.
    pub async fn cancel(
        &self,
        id: Uuid,
        origin: &Origin,
        nonce: Option<PendingNonce>,
        reason: String,
    ) -> AppResult<OrderView> {
        self.execute(id, origin, nonce, || {
            OrderCommand::CancelOrder(CancelOrder {
                reason: reason.clone(),
                now: Utc::now(),
            })
        })
        .await
    }

    /// Records issued tickets.
    ///
    /// # Errors
    /// The domain's refusal, or the store's.
    pub async fn record_tickets(
        &self,
        id: Uuid,
        origin: &Origin,
        nonce: Option<PendingNonce>,
        tickets: Vec<IssuedTicket>,
    ) -> AppResult<OrderView> {
        self.execute(id, origin, nonce, || {
            OrderCommand::RecordTickets(RecordTickets {
                tickets: tickets.clone(),
                now: Utc::now(),
            })
        })
        .await
    }

    /// A refund through the saga ([`crate::app::refund`]). Its id derives from the order and
    /// `key`, so a retried request resumes the same refund instead of starting another.
    ///
    /// It takes no pending replay key: the saga asks the peers before its first append and
    /// calls payment-service after it, so a request's key must be recorded before it starts
    /// (its route records first), or a replay could reach payment-service.
    ///
    /// # Errors
    /// As [`RefundSaga::run`]; and [`AppError::PeerFailed`] when payment-service explicitly
    /// refused it, which is then recorded as failed.
    pub async fn refund(
        &self,
        id: Uuid,
        origin: &Origin,
        key: &str,
        amount_cents: Option<i64>,
        reason: String,
    ) -> AppResult<RefundOutcome> {
        let refund_id = Uuid::new_v5(&REFUND_NS, format!("{id}\n{key}").as_bytes());
        let request = RefundRequest {
            refund_id,
            amount_cents,
            reason,
        };
        let saga = RefundSaga::new(self.store.clone(), self.clients.clone());
        let settled = saga
            .run(id, &request, &origin.metadata, origin.guard())
            .await?;
        let completed = match &settled {
            Settled::Completed(_) => true,
            Settled::Pending(_) => false,
            Settled::Failed { reason, .. } => {
                return Err(AppError::PeerFailed(format!(
                    "payment-service did not refund: {reason}; refund {refund_id} is recorded as failed"
                )))
            }
        };
        let order = settled.order();
        let amount_cents = order
            .refunds
            .iter()
            .find(|r| r.refund_id == refund_id)
            .map(|r| r.amount_cents);
        Ok(RefundOutcome {
            order: view_of(order)?,
            refund_id,
            completed,
            amount_cents,
        })
    }

    async fn execute(
        &self,
        id: Uuid,
        origin: &Origin,
        nonce: Option<PendingNonce>,
        command: impl Fn() -> OrderCommand,
    ) -> AppResult<OrderView> {
        let done = self
            .store
            .execute_signed(id, &origin.metadata, nonce, origin.guard(), command)
            .await?;
        view_of(&done.order)
    }
}

/// The order as a command left it.
fn view_of(order: &Order) -> AppResult<OrderView> {
    OrderView::from_aggregate(order).ok_or_else(|| {
        AppError::internal(anyhow::anyhow!("command answered with an uncreated order"))
    })
}
