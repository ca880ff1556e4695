//! A three-node JetStream cluster on loopback: each node a `nats-server` process started from
//! `deploy/nats/cluster.conf` (the production file, its per-node values in the environment) on
//! free client, route and monitoring ports, with its own store directory. Nodes are killed by
//! pid (`kill -9` semantics through [`Child::kill`]) and restarted on the same ports and store,
//! as after a crash; dropping the cluster kills every node and removes the directories.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, stream};

use super::poll_until;
use super::procs::{free_ports, ScratchDir};

/// The cluster configuration every node runs.
pub fn config_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/cluster.conf")
}

/// One node: its name (`n0`, `n1`, ...), ports and process.
#[derive(Debug)]
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    pub route_port: u16,
    pub monitor_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (started, not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    pub cluster_name: String,
    binary: PathBuf,
    dir: ScratchDir,
}

impl NatsCluster {
    /// Starts `size` nodes, routed to each other, and waits until each listens. JetStream may
    /// not have elected its meta leader yet: [`Self::wait_ready`] waits for that.
    ///
    /// A port chosen free can be taken by another process (a parallel test) before its node
    /// binds it; a start that loses one that way starts again on new ports, up to three times.
    ///
    /// # Errors
    /// When nats-server is missing or a node does not listen within 10 s.
    pub fn start(size: usize) -> anyhow::Result<Self> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            let mut cluster = Self::new(size);
            match cluster.start_nodes() {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < ATTEMPTS && cluster.lost_a_port() => {
                    eprintln!("nats cluster: a chosen port was taken, starting again: {e}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The nodes on fresh ports, not started.
    fn new(size: usize) -> Self {
        let dir = ScratchDir::new("soak-nats-cluster");
        let ports = free_ports(3 * size);
        let nodes = ports
            .chunks(3)
            .enumerate()
            .map(|(i, p)| NatsNode {
                name: format!("n{i}"),
                port: p[0],
                route_port: p[1],
                monitor_port: p[2],
                store: dir.path.join(format!("n{i}")),
                log: dir.path.join(format!("n{i}.log")),
                child: None,
            })
            .collect();
        Self {
            nodes,
            cluster_name: format!("soak-{}", super::tag()),
            binary: super::procs::nats_server_binary(),
            dir,
        }
    }

    fn start_nodes(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.spawn(i)?;
        }
        for i in 0..self.nodes.len() {
            self.wait_listening(i)?;
        }
        Ok(())
    }

    /// Whether a node's log says one of its ports was already in use.
    fn lost_a_port(&self) -> bool {
        self.nodes.iter().any(|n| {
            std::fs::read_to_string(&n.log).is_ok_and(|log| log.contains("address already in use"))
        })
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.route_port))
            .collect();
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(config_file())
            .env("NATS_SERVER_NAME", &node.name)
            .env("NATS_LISTEN", format!("127.0.0.1:{}", node.port))
            .env(
                "NATS_MONITOR_LISTEN",
                format!("127.0.0.1:{}", node.monitor_port),
            )
            .env("NATS_STORE_DIR", &node.store)
            .env("NATS_CLUSTER_NAME", &self.cluster_name)
            .env(
                "NATS_CLUSTER_LISTEN",
                format!("127.0.0.1:{}", node.route_port),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The file names three routes; a smaller test cluster repeats the last one.
        for k in 0..3 {
            let route = routes.get(k).or(routes.last()).cloned().unwrap_or_default();
            cmd.env(format!("NATS_ROUTE_{}", k + 1), route);
        }
        let child = cmd
            .spawn()
            .context("nats-server starts (install it or put it on PATH)")?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Waits until node `i` listens for clients and for routes. The route port is judged by
    /// the node's own log, not by a connection: a node whose route port was taken serves
    /// clients for a moment before it exits, and the port answers, but for the other process.
    fn wait_listening(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let routes = format!(
            "Listening for route connections on 127.0.0.1:{}",
            self.nodes[i].route_port
        );
        let (port, log) = (self.nodes[i].port, self.nodes[i].log.clone());
        let serves_clients = || TcpStream::connect(("127.0.0.1", port)).is_ok();
        let routes_bound = || std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&routes));
        while !(serves_clients() && routes_bound()) {
            if !self.nodes[i].is_running() {
                bail!(
                    "nats-server {} exited at start-up:\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 20)
                );
            }
            if Instant::now() > deadline {
                bail!("nats-server {} did not listen", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Every node's client URL, comma-separated: the service's `NATS_URL`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `kill -9` node `i` by its pid; its store stays, as after a crash.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store, and waits until it listens.
    ///
    /// # Errors
    /// When it does not start or listen.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill();
        self.spawn(i)?;
        self.wait_listening(i)
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log directory (kept on failure or with `SOAK_KEEP=1`).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// A JetStream client given every node's URL.
    ///
    /// # Errors
    /// When no node answers.
    pub async fn connect(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(crate::soak::nats_servers(&self.urls()))
            .await
            .context("the NATS cluster answers")?;
        Ok(jetstream::new(client))
    }

    /// Waits until JetStream can place a stream on every node: a probe stream with one replica
    /// per node is created and deleted. Before that the meta group may still be electing its
    /// leader or missing a peer, and the service's first stream creation would fail.
    ///
    /// # Errors
    /// When that does not succeed within `within`.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let js = self.connect().await?;
        let replicas = self.nodes.len();
        let name = format!("PROBE_{}", super::tag().to_uppercase());
        let last_error = std::sync::Mutex::new(String::new());
        let ok = poll_until(within, || {
            let (js, name, last_error) = (js.clone(), name.clone(), &last_error);
            async move {
                let config = stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("probe.{name}")],
                    num_replicas: replicas,
                    storage: stream::StorageType::Memory,
                    ..Default::default()
                };
                let note = |e: String| {
                    *last_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
                };
                // Creating the same stream again is accepted, so a probe whose delete timed out
                // is simply tried again.
                if let Err(e) = js.create_stream(config).await {
                    note(format!("create: {e}"));
                    return None;
                }
                if let Err(e) = js.delete_stream(&name).await {
                    note(format!("delete: {e}"));
                    return None;
                }
                Some(())
            }
        })
        .await;
        if ok.is_none() {
            let logs: Vec<String> = (0..self.nodes.len())
                .map(|i| format!("--- {}:\n{}", self.nodes[i].name, self.log_tail(i, 12)))
                .collect();
            anyhow::bail!(
                "JetStream cluster was not ready within {within:?} (last: {}):\n{}",
                last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                logs.join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// Where a replicated stream lives: its leader and its replicas, as the cluster reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub leader: Option<String>,
    /// Every node holding a copy, the leader included.
    pub peers: Vec<String>,
    /// Replicas the stream is configured with.
    pub replicas: usize,
}

/// The placement of `stream`.
///
/// # Errors
/// When the stream cannot be read (no leader answers).
pub async fn placement(js: &jetstream::Context, stream: &str) -> anyhow::Result<Placement> {
    let mut s = js.get_stream(stream).await?;
    let info = s.info().await?;
    let mut placement = Placement {
        replicas: info.config.num_replicas,
        ..Placement::default()
    };
    if let Some(cluster) = &info.cluster {
        placement.leader.clone_from(&cluster.leader);
        placement.peers.extend(cluster.leader.iter().cloned());
        placement
            .peers
            .extend(cluster.replicas.iter().map(|r| r.name.clone()));
    }
    placement.peers.sort();
    Ok(placement)
}

/// The leader of `stream` once one answers (during an election nobody does).
pub async fn leader_of(js: &jetstream::Context, stream: &str, within: Duration) -> Option<String> {
    poll_until(within, || async {
        placement(js, stream).await.ok().and_then(|p| p.leader)
    })
    .await
}
