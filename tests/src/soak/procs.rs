//! The processes a scenario runs: `order-service serve` replicas, a private nats-server and a
//! private Postgres. Each is killed on drop (SIGKILL through [`Child::kill`]), so a panicking
//! scenario leaves nothing running, and each keeps its files in a [`ScratchDir`] that is removed
//! on drop unless the thread is panicking or `SOAK_KEEP=1` is set (then the logs stay for the
//! post-mortem and their path is printed).

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A free loopback port (bound and released; good enough on a test machine).
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports: each stays bound until all are chosen, so that none is
/// handed out twice. Like [`free_port`], each is free only until someone else binds it.
///
/// # Panics
/// When no port can be bound.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("a bound port").port())
        .collect()
}

/// A temporary directory, removed on drop unless the thread panics or `SOAK_KEEP=1`.
#[derive(Debug)]
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    /// `/tmp/<prefix>-<tag>`, created.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", super::tag()));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Self { path }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var("SOAK_KEEP").as_deref() == Ok("1") {
            eprintln!("soak: kept {} for the post-mortem", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One `order-service serve` replica on a fixed port, so that it comes back at the same
/// address after a kill.
#[derive(Debug)]
pub struct Replica {
    pub name: String,
    pub port: u16,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Replica {
    /// A replica that is not started yet; its log goes to `<dir>/<name>.log`.
    pub fn new(name: &str, binary: &Path, env: Vec<(String, String)>, dir: &Path) -> Self {
        Self {
            name: name.to_owned(),
            port: free_port(),
            binary: binary.to_owned(),
            env,
            log: dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (appending to its log) and waits until `/health/live` answers.
    ///
    /// # Errors
    /// When it cannot start or is not live within 60 s (or exits meanwhile).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("cannot start {}", self.binary.display()))?,
        );
        self.starts += 1;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if !self.is_running() {
                bail!(
                    "{} exited at start-up; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if let Ok(r) = client
                .get(format!("{}/health/live", self.url()))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} did not become live; see {}",
            self.name,
            self.log.display()
        )
    }

    /// `kill -9`: no shutdown hook runs, no lock is released politely.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Whether the process is still running (it has not crashed or been killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether it was started and not killed since (it may still have crashed).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The replica's log so far (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The nats-server on `PATH`, else Debian's `/usr/sbin/nats-server`: every test that starts a
/// private server runs this one.
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A private nats-server with JetStream on a free port, for scenarios that stop the broker.
#[derive(Debug)]
pub struct PrivateNats {
    pub port: u16,
    dir: ScratchDir,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts one and waits until it accepts connections.
    ///
    /// # Errors
    /// When nats-server is missing or does not listen within 10 s.
    pub fn start() -> anyhow::Result<Self> {
        let mut nats = Self {
            port: free_port(),
            dir: ScratchDir::new("soak-nats"),
            child: None,
        };
        nats.restart()?;
        Ok(nats)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and store, and waits until it listens.
    ///
    /// # Errors
    /// When it cannot start or does not listen within 10 s.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path.join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server starts (install it or put it on PATH)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills it (the store stays, as after a crash).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A private Postgres cluster (initdb + pg_ctl) on a free port, for scenarios that stop the
/// database. As root it runs as the `postgres` user through `runuser`, since Postgres refuses to
/// run as root; its directory is then handed to that user.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    bindir: PathBuf,
    dir: ScratchDir,
    as_postgres: bool,
    running: bool,
    /// Extra server settings (`name=value`), given as `-c` options at every start.
    settings: Vec<String>,
}

impl PrivatePostgres {
    /// Initialises and starts a cluster with trust authentication for user `postgres`.
    ///
    /// # Errors
    /// When no Postgres server binaries are found, or initdb or the start fails.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// [`Self::start`] with extra server settings (`name=value`, each given as `-c`).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_with(settings: &[&str]) -> anyhow::Result<Self> {
        let mut pg = Self::unstarted("soak-pg")?;
        pg.settings = settings.iter().map(|s| (*s).to_owned()).collect();
        let data = pg.dir.path.join("data");
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        pg.restart()?;
        Ok(pg)
    }

    /// A cluster directory (handed to the `postgres` user when running as root) and a port,
    /// nothing in it yet.
    fn unstarted(prefix: &str) -> anyhow::Result<Self> {
        let bindir = Self::bindir().context("no initdb/pg_ctl under /usr/lib/postgresql")?;
        let dir = ScratchDir::new(prefix);
        let as_postgres = std::fs::metadata("/proc/self")?.uid() == 0;
        if as_postgres {
            let id = |flag: &str| -> anyhow::Result<u32> {
                let out = Command::new("id").args([flag, "postgres"]).output()?;
                Ok(String::from_utf8(out.stdout)?.trim().parse()?)
            };
            std::os::unix::fs::chown(&dir.path, Some(id("-u")?), Some(id("-g")?))
                .context("chown the cluster's directory")?;
        }
        Ok(Self {
            port: free_port(),
            bindir,
            dir,
            as_postgres,
            running: false,
            settings: Vec::new(),
        })
    }

    /// A hot standby of this cluster: `pg_basebackup -R` (which writes the connection to the
    /// primary and `standby.signal`) into a directory of its own, started on its own free port.
    /// It streams the primary's WAL and answers read-only queries.
    ///
    /// # Errors
    /// When the base backup or the start fails.
    pub fn start_standby(&self) -> anyhow::Result<Self> {
        let mut standby = Self::unstarted("soak-pg-standby")?;
        let data = standby.dir.path.join("data");
        let out = standby
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        standby.restart()?;
        Ok(standby)
    }

    fn bindir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| {
                ["initdb", "pg_ctl", "pg_basebackup"]
                    .iter()
                    .all(|t| d.join(t).is_file())
            })
            .collect();
        dirs.sort();
        dirs.pop()
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the cluster (again) and waits until it accepts connections.
    ///
    /// # Errors
    /// When pg_ctl fails.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let data = self.dir.path.join("data");
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off \
             -c max_connections=200",
            self.port
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.path.join("pg.log"))
            // pg_ctl's wait, generous: under the whole suite's load on two cores, a standby's
            // first start (recovery up to a consistent point) has taken longer than 30 s.
            .args(["-o", &options, "-w", "-t", "120", "start"])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = true;
        Ok(())
    }

    /// Stops the cluster: `fast` disconnects every session and shuts down cleanly; `immediate`
    /// is a crash (recovery runs at the next start).
    ///
    /// # Errors
    /// When pg_ctl fails.
    pub fn stop(&mut self, mode: &str) -> anyhow::Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path.join("data"))
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .output()?;
        self.running = false;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}
