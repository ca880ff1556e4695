//! The stream's duplicate window covers every subject, and an event's `Nats-Msg-Id` is derived
//! from its order and sequence. A message on another subject that takes an event's id first
//! must not make the relay count the event as published: the relay compares what the stream
//! holds under that id with what it sent.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use order_bus::envelope::event_id;
use order_bus::relay::{self, jetstream_context};
use order_bus::{Relay, RelayConfig, RelayOutcome, Subjects, RELAY_CONSUMER};
use order_domain::ORDER_AGGREGATE_TYPE;
use order_projections::{feed, FeedPosition};
use order_tests::helpers::nats_url;
use order_tests::spawn_app;
use sqlx::PgPool;
use uuid::Uuid;

/// Counts the messages on `subject` in `stream`.
async fn on_subject(js: &jetstream::Context, stream: &str, subject: &str) -> usize {
    let stream = js.get_stream(stream).await.expect("stream");
    let info = stream.info_with_subjects(subject).await.expect("subjects");
    let mut count = 0;
    let mut info = info;
    while let Some(Ok((_, n))) = futures::StreamExt::next(&mut info).await {
        count += n;
    }
    count
}

/// Runs rounds until one publishes or fails, waiting out a fence held elsewhere.
async fn round(relay: &Relay) -> Result<RelayOutcome, order_bus::BusError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match relay.run_once().await {
            Ok(RelayOutcome::Idle) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_foreign_message_with_an_events_id_does_not_swallow_the_event(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let tag = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let (name, prefix) = (format!("DUPS_{}", tag.to_uppercase()), format!("d{tag}."));
    let client = async_nats::connect(nats_url()).await.expect("NATS is up");
    let js = jetstream_context(client, Duration::from_secs(5));
    let mut config = RelayConfig::new(&name, &prefix);
    // A short window, so that the test can also see the event go out once it has passed.
    config.stream.duplicate_window = Duration::from_secs(1);
    order_bus::ensure_stream(&js, &config.stream)
        .await
        .expect("stream");
    let relay = Relay::new(pool.clone(), js.clone(), config);

    let order = app.create_order().await;
    let id = order["id"].as_str().expect("id");
    let taken = event_id(ORDER_AGGREGATE_TYPE, id, 1);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", taken.to_string().as_str());
    js.publish_with_headers(format!("{prefix}ticket.forged"), headers, "{}".into())
        .await
        .expect("publish")
        .await
        .expect("the forged message is stored");

    let err = round(&relay)
        .await
        .expect_err("the relay saw through the duplicate");
    assert!(err.to_string().contains("not this event"), "{err}");
    let lag = relay::lag(&pool, RELAY_CONSUMER).await.expect("lag");
    assert_eq!(lag.events_behind, 1, "the event was counted as published");
    let created = format!("{prefix}order.created");
    assert_eq!(on_subject(&js, &name, &created).await, 0);

    // Once the window has passed, the event goes out.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(matches!(
        round(&relay).await,
        Ok(RelayOutcome::Published(1))
    ));
    assert_eq!(on_subject(&js, &name, &created).await, 1);

    // A genuine re-send (this very message already stored) still counts as published.
    let second = app.create_order().await;
    let second = second["id"].as_str().expect("id").to_owned();
    let mut conn = pool.acquire().await.expect("connection");
    let deadline = Instant::now() + Duration::from_secs(20);
    let resent = loop {
        let batch = feed::read_raw_after(&mut *conn, FeedPosition::default(), 100)
            .await
            .expect("feed");
        let events = batch.events().collect::<Result<Vec<_>, _>>().expect("rows");
        let (messages, _) = relay::encode_events(&mut conn, &Subjects::new(&prefix), events)
            .await
            .expect("encode");
        if let Some(m) = messages.into_iter().find(|m| m.aggregate_id == second) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the second order never reached the feed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    js.publish_with_headers(
        resent.subject.clone(),
        resent.headers.clone(),
        resent.body.clone(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    assert!(matches!(
        round(&relay).await,
        Ok(RelayOutcome::Published(1))
    ));
    assert_eq!(on_subject(&js, &name, &created).await, 2);
    let _ = js.delete_stream(&name).await;
}
