//! The operations kit in `deploy/`: the Prometheus alert rules pass `promtool check rules` and
//! their own unit tests, the NATS cluster configuration passes `nats-server -t`, and every
//! metric the rules and the Grafana dashboard name is exported by a running service's
//! `/metrics`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use order_tests::soak::cluster::{shared_admin_url, with_database, Cluster, ClusterSpec};
use order_tests::soak::poll_until;
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

const RULES: &str = "prometheus/order-service.rules.yml";
const RULE_TESTS: &str = "prometheus/order-service.rules.test.yml";
const DASHBOARD: &str = "grafana/order-service.json";

/// `promtool`, from Debian's `prometheus` package (`.ci/run` installs it). Only when `.ci/run`
/// could not install it (it then sets `PROMTOOL_UNAVAILABLE=1`) is the check skipped, loudly.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() && std::env::var("PROMTOOL_UNAVAILABLE").as_deref() == Ok("1") {
        eprintln!(
            "\n!!! SKIPPED: promtool is not installed and could not be (PROMTOOL_UNAVAILABLE=1): \
             the alert rules in deploy/prometheus were NOT checked. Install Debian's `prometheus` \
             package and run `just deploy-check`. !!!\n"
        );
        return None;
    }
    Some(found.expect(
        "promtool is missing: install Debian's `prometheus` package (apt-get install prometheus), \
         as .ci/run does",
    ))
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = Command::new(&promtool)
            .args(&args[..2])
            .arg(deploy(args[2]))
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn nats_server_accepts_the_cluster_configuration() {
    let out = Command::new("nats-server")
        .arg("-c")
        .arg(deploy("nats/cluster.conf"))
        .arg("-t")
        .env("NATS_SERVER_NAME", "n0")
        .env("NATS_LISTEN", "127.0.0.1:4222")
        .env("NATS_MONITOR_LISTEN", "127.0.0.1:8222")
        .env(
            "NATS_STORE_DIR",
            std::env::temp_dir().join("nats-conf-check"),
        )
        .env("NATS_CLUSTER_NAME", "orders")
        .env("NATS_CLUSTER_LISTEN", "127.0.0.1:6222")
        .env("NATS_ROUTE_1", "nats://127.0.0.1:6222")
        .env("NATS_ROUTE_2", "nats://127.0.0.1:6223")
        .env("NATS_ROUTE_3", "nats://127.0.0.1:6224")
        .output()
        .expect("nats-server runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names a PromQL expression reads: identifiers that are not functions (followed by
/// `(`), keywords, label names (inside `{}` or a `by (...)` clause), strings or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop strings, label matchers and range selectors.
    let mut plain = String::new();
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        match (closing, c) {
            (None, '"') => closing = Some('"'),
            (None, '{') => closing = Some('}'),
            (None, '[') => closing = Some(']'),
            (Some(end), c) if c == end => {
                closing = None;
                plain.push(' ');
            }
            (Some(_), _) => {}
            (None, c) => plain.push(c),
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                // The parenthesised label list that follows is not metrics.
                skip_group = true;
                continue;
            }
            // Keywords, and the aggregation operators, which may come before `by (...)`
            // rather than their parenthesis.
            let keyword = [
                "and",
                "or",
                "unless",
                "bool",
                "offset",
                "inf",
                "nan",
                "sum",
                "min",
                "max",
                "avg",
                "count",
                "group",
                "stddev",
                "stdvar",
                "topk",
                "bottomk",
                "quantile",
                "count_values",
            ]
            .contains(&word.as_str());
            if next != Some(&'(') && !keyword {
                names.insert(word);
            }
        } else if c == '(' && skip_group {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_extractor_finds_metrics_and_nothing_else() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{route=~\"/a|b\"}[5m]))) \
         > 1 and (sum(relay_is_leader) or vector(0)) < 1 unless max by (job) (job_breaker_open) == 1",
    );
    let expected: BTreeSet<String> = [
        "http_request_duration_seconds_bucket",
        "relay_is_leader",
        "job_breaker_open",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
}

/// Every `expr` of the rules file and the dashboard.
fn kit_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let rules = std::fs::read_to_string(deploy(RULES)).expect("rules file");
    for line in rules.lines() {
        if let Some(e) = line.trim().strip_prefix("expr:") {
            exprs.push((RULES.to_owned(), e.trim().to_owned()));
        }
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy(DASHBOARD)).expect("dashboard"))
            .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push((
                DASHBOARD.to_owned(),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    exprs
}

/// The names a `/metrics` page exports (the part of each sample line before `{` or a space).
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The real binary, with the relay, the inbound consumers, the jobs and a read standby, exports every metric the rules and the dashboard name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for (_, expr) in kit_expressions() {
        wanted.extend(metric_names(&expr));
    }
    assert!(
        wanted.len() >= 10 && wanted.contains("relay_is_leader"),
        "{wanted:?}"
    );
    // The scenario's own database stands in for the standby: only the names matter here.
    let tag = order_tests::soak::tag();
    let db = with_database(&shared_admin_url(), &format!("soak_{tag}"));
    let mut spec = ClusterSpec::new(1)
        .with("JOB_EXPIRATION_INTERVAL_SECS", 1)
        .with("READ_DATABASE_URL", db);
    spec.tag = Some(tag);
    spec.inbound = true;
    spec.jobs = true;
    let cluster = Cluster::start(spec).await.expect("the service starts");
    // One inbound message (poison: it is parked), so that the inbound series exist.
    cluster
        .js
        .publish(
            format!("{}payment.succeeded", cluster.prefix),
            "{not json".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("acknowledged");
    let url = format!("{}/metrics", cluster.urls()[0]);
    let client = reqwest::Client::new();
    // Gauges measured by background loops appear within their first round.
    let missing = std::sync::Mutex::new(BTreeSet::new());
    let all = poll_until(Duration::from_secs(30), || async {
        let page = client.get(&url).send().await.ok()?.text().await.ok()?;
        let have = exported(&page);
        let gone: BTreeSet<String> = wanted.difference(&have).cloned().collect();
        let done = gone.is_empty();
        *missing.lock().expect("not poisoned") = gone;
        done.then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "named in deploy/ but not exported by /metrics: {:?}",
        missing.lock().expect("not poisoned")
    );
}
