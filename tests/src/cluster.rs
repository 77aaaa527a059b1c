//! Real multi-process clusters for tests: `ferrolog server` child processes
//! on loopback ports, each with its own temp data dir and log file.

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::eventually;
use crate::lossyfs::LossyDisk;
use crate::wait_for;

/// The `ferrolog` binary: `FERROLOG_BIN`, else next to the test binary's
/// directory (`target/<profile>/ferrolog`), which `scripts/test.sh` builds.
pub fn ferrolog_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("FERROLOG_BIN") {
        return Ok(PathBuf::from(p));
    }
    // Test binaries live in target/<profile>/deps, binaries such as
    // `ferrolog-chaos` in target/<profile>: look next to the executable and
    // one level up.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("test binary has no directory")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let bin = d.join("ferrolog");
        if bin.exists() {
            return Ok(bin);
        }
    }
    bail!("ferrolog not found next to {}: build it first (cargo build --workspace) or set FERROLOG_BIN", exe.display())
}

/// A free loopback port (bound and released; the broker binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free loopback ports: all are held open until every one is
/// chosen, so the OS cannot hand the same port out twice.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    free_ports_on("127.0.0.1", n)
}

/// `n` distinct free ports on `ip`.
pub fn free_ports_on(ip: &str, n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n).map(|_| std::net::TcpListener::bind((ip, 0))).collect::<Result<Vec<_>, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// One broker process.
#[derive(Debug)]
pub struct Node {
    /// Broker id.
    pub id: u64,
    /// `127.0.0.1:port`.
    pub addr: String,
    /// Where it serves Prometheus metrics.
    pub metrics_addr: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Started with `--join` instead of being an initial peer.
    joined: bool,
    /// The power-loss filesystem its data dir is mounted on, if any.
    disk: Option<LossyDisk>,
}

/// A cluster of broker processes.
#[derive(Debug)]
pub struct Cluster {
    /// The brokers, by index (id = index + 1).
    pub nodes: Vec<Node>,
    peers: String,
    dir: tempfile::TempDir,
    /// Extra environment of every broker process (e.g. failpoints).
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `n` brokers, all initial metadata voters.
    pub fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with_env(n, &[])
    }

    /// Starts `n` brokers with extra environment variables (restarts keep them).
    pub fn start_with_env(n: usize, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_opts(n, env, false)
    }

    /// Starts `n` brokers, each on its own loopback address `127.a.b.i`
    /// (`a.b` from this process's id, so concurrent runs do not share
    /// addresses). Brokers bind their outgoing peer connections to their
    /// address, so a network fault can cut one (source, destination) pair
    /// with iptables ([`crate::netfault`]).
    pub fn start_on_own_ips(n: usize, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_opts(n, env, true)
    }

    /// Starts `n` brokers whose data dirs are each on their own
    /// [`LossyDisk`] (a filesystem that forgets unsynced writes on a power
    /// cut: [`Cluster::power_cut`]), on their own loopback addresses when
    /// `own_ips`. Needs root and `/dev/fuse`.
    pub fn start_on_lossy_disks(n: usize, env: &[(&str, &str)], own_ips: bool) -> anyhow::Result<Self> {
        Self::start_opts_with(n, env, own_ips, true)
    }

    fn start_opts(n: usize, env: &[(&str, &str)], own_ips: bool) -> anyhow::Result<Self> {
        Self::start_opts_with(n, env, own_ips, false)
    }

    fn start_opts_with(n: usize, env: &[(&str, &str)], own_ips: bool, lossy: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pid = std::process::id();
        let ips: Vec<String> = (0..n)
            .map(|i| {
                if own_ips {
                    format!("127.{}.{}.{}", 100 + pid % 100, (pid / 100) % 256, i + 1)
                } else {
                    "127.0.0.1".into()
                }
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let ports = free_ports_on(ip, 2)?;
            let id = i as u64 + 1;
            let data_dir = dir.path().join(format!("node-{id}"));
            let disk = if lossy {
                let backing = dir.path().join(format!("node-{id}.backing"));
                std::fs::create_dir(&backing)?;
                std::fs::create_dir(&data_dir)?;
                Some(LossyDisk::mount(&backing, &data_dir)?)
            } else {
                None
            };
            nodes.push(Node {
                id,
                addr: format!("{ip}:{}", ports[0]),
                metrics_addr: format!("{ip}:{}", ports[1]),
                data_dir,
                log: dir.path().join(format!("node-{id}.log")),
                child: None,
                joined: false,
                disk,
            });
        }
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut c = Cluster { nodes, peers, dir, env };
        for i in 0..n {
            c.spawn(i, &[])?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize, extra_env: &[(&str, &str)]) -> anyhow::Result<()> {
        let bin = ferrolog_bin()?;
        let seed = self.nodes[0].addr.clone();
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let membership = if node.joined { ["--join", &seed] } else { ["--peers", &self.peers] };
        let child = Command::new(bin)
            .args(["server", "--node-id", &node.id.to_string(), "--listen", &node.addr])
            .args(membership)
            .args(["--metrics-listen", &node.metrics_addr])
            // Enforce retention often, so retention tests are quick.
            .args(["--retention-check-ms", "200"])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .env("RUST_LOG", std::env::var("FERROLOG_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// Starts one more broker that joins the running cluster through
    /// broker 1 (`--join`); returns its id.
    pub fn add_joining_node(&mut self) -> anyhow::Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        let ports = free_ports(2)?;
        self.nodes.push(Node {
            id,
            addr: format!("127.0.0.1:{}", ports[0]),
            metrics_addr: format!("127.0.0.1:{}", ports[1]),
            data_dir: self.dir.path().join(format!("node-{id}")),
            log: self.dir.path().join(format!("node-{id}.log")),
            child: None,
            joined: true,
            disk: None,
        });
        self.spawn(id as usize - 1, &[])?;
        Ok(id)
    }

    /// Addresses of every broker (running or not).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The node with broker id `id`.
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// SIGKILLs broker `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut c) = node.child.take() {
            c.kill()?; // SIGKILL
            c.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM to broker `id` and waits up to `timeout` for it to exit.
    #[allow(unsafe_code)]
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let node = &mut self.nodes[id as usize - 1];
        let mut c = node.child.take().context("broker is not running")?;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(c.id() as i32, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to broker {id}: {}", std::io::Error::last_os_error());
        }
        // Stops at an exit or at an error of try_wait (read again below).
        if let Err(e) = wait_for(&format!("broker {id} to exit"), timeout, || !matches!(c.try_wait(), Ok(None))) {
            let _ = c.kill();
            let _ = c.wait();
            return Err(e.context(format!("broker {id} did not exit within {timeout:?} of SIGTERM")));
        }
        // The status is kept by `Child` once reaped.
        c.try_wait()?.with_context(|| format!("broker {id} exited but has no status"))
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to broker `id`.
    #[allow(unsafe_code)]
    pub fn signal(&self, id: u64, signal: i32) -> anyhow::Result<()> {
        let c = self.nodes[id as usize - 1].child.as_ref().context("broker is not running")?;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(c.id() as i32, signal) } != 0 {
            bail!("signal {signal} to broker {id}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Resident memory of broker `id`'s process, in bytes (`VmRSS`).
    pub fn rss_bytes(&self, id: u64) -> anyhow::Result<u64> {
        self.status_bytes(id, "VmRSS")
    }

    /// A size field of broker `id`'s `/proc/PID/status` (`VmRSS`,
    /// `RssAnon`: the memory it allocated, without file-backed pages such
    /// as its own code), in bytes.
    pub fn status_bytes(&self, id: u64, field: &str) -> anyhow::Result<u64> {
        let c = self.nodes[id as usize - 1].child.as_ref().context("broker is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", c.id()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|l| l.strip_prefix(':')))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {field} in /proc/PID/status"))?;
        Ok(kb * 1024)
    }

    /// SIGKILLs broker `id` and deletes its data dir, as a lost or replaced
    /// disk would (its log file, outside the data dir, stays).
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        let node = &self.nodes[id as usize - 1];
        let dir = &node.data_dir;
        if let Some(disk) = &node.disk {
            // The mount point stays; everything on the disk goes.
            disk.power_cut();
            for e in std::fs::read_dir(dir)? {
                let p = e?.path();
                if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }
                    .with_context(|| format!("wipe {}", p.display()))?;
            }
        } else if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("wipe {}", dir.display()))?;
        }
        Ok(())
    }

    /// A power cut of broker `id`: SIGKILL, then its disk forgets every
    /// write that was not fsynced (the broker must be on a [`LossyDisk`]:
    /// [`Cluster::start_on_lossy_disks`]). Returns the bytes dropped.
    /// Restart it with [`Cluster::restart`].
    pub fn power_cut(&mut self, id: u64) -> anyhow::Result<u64> {
        self.kill(id)?;
        let disk =
            self.nodes[id as usize - 1].disk.as_ref().with_context(|| format!("broker {id} is not on a lossy disk"))?;
        Ok(disk.power_cut())
    }

    /// Broker `id`'s power-loss disk, if it has one.
    pub fn disk(&self, id: u64) -> Option<&LossyDisk> {
        self.nodes[id as usize - 1].disk.as_ref()
    }

    /// Moves stopped broker `id`'s data dir onto a tmpfs of `bytes` (a
    /// small disk that fills up); unmounted when the returned guard drops
    /// (keep it until the broker has stopped). Needs root.
    pub fn put_on_small_disk(&mut self, id: u64, bytes: u64) -> anyhow::Result<SmallDisk> {
        anyhow::ensure!(!self.is_running(id), "broker {id} must be stopped to move its data dir");
        let dir = self.nodes[id as usize - 1].data_dir.clone();
        let aside = dir.with_extension("aside");
        std::fs::rename(&dir, &aside).with_context(|| format!("move {} aside", dir.display()))?;
        std::fs::create_dir(&dir)?;
        let size = format!("size={bytes}");
        run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", &dir.to_string_lossy()])
            .context("a small disk needs root (mount -t tmpfs)")?;
        let disk = SmallDisk { path: dir.clone() };
        run("cp", &["-a", &format!("{}/.", aside.display()), &dir.to_string_lossy()])?;
        std::fs::remove_dir_all(&aside)?;
        Ok(disk)
    }

    /// The directory holding every broker's data and log.
    pub fn data_root(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Whether broker `id` has a running process.
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].child.is_some()
    }

    /// Restarts broker `id` on its data dir.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.restart_with_env(id, &[])
    }

    /// Restarts broker `id` with extra environment variables for this run
    /// only (e.g. a failpoint).
    pub fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.kill(id)?;
        self.spawn(id as usize - 1, env)
    }

    /// Waits up to `timeout` for broker `id` to exit on its own; returns its
    /// status (and forgets the process) if it did.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let node = &mut self.nodes[id as usize - 1];
        // Polled synchronously (it needs `&mut`), handed over as a ready
        // future: `Ok` stops the wait (with try_wait's own answer, error
        // included), `Err` keeps waiting.
        let polled = eventually(&format!("broker {id} to exit"), timeout, || {
            let answer: Option<std::io::Result<Option<std::process::ExitStatus>>> =
                node.child.as_mut().map(|c| c.try_wait());
            std::future::ready(match answer {
                None => Ok(Ok(None)),
                Some(Ok(Some(status))) => {
                    node.child = None;
                    Ok(Ok(Some(status)))
                }
                Some(Ok(None)) => Err("still running".to_string()),
                Some(Err(e)) => Ok(Err(e)),
            })
        })
        .await;
        match polled {
            Ok(answer) => Ok(answer?),
            // Still running after `timeout`: not an error here.
            Err(_) => Ok(None),
        }
    }

    /// The IP address broker `id` listens on.
    pub fn ip(&self, id: u64) -> &str {
        self.node(id).addr.rsplit_once(':').map_or("", |(ip, _)| ip)
    }

    /// Waits until every running broker reports SERVING on grpc.health.v1.
    pub async fn wait_serving(&mut self, timeout: Duration) -> anyhow::Result<()> {
        // One deadline for all brokers: each waits for what is left of it.
        let deadline = Instant::now() + timeout;
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            let addr = self.nodes[i].addr.clone();
            let Some(child) = self.nodes[i].child.as_mut() else { continue };
            let left = deadline.saturating_duration_since(Instant::now());
            // `Ok(None)`: serving; `Ok(Some(status))`: exited first.
            let polled = eventually(&format!("broker {id} to serve"), left, || {
                // Checked before the await (it needs `&mut`).
                let exited = child.try_wait().ok().flatten();
                let addr = addr.clone();
                async move {
                    if let Some(status) = exited {
                        return Ok(Some(status));
                    }
                    if serving(&addr).await { Ok(None) } else { Err(format!("broker {id} not serving")) }
                }
            })
            .await;
            match polled {
                Ok(None) => {}
                Ok(Some(status)) => {
                    bail!("broker {id} exited with {status} before serving; log:\n{}", self.log_tail(id))
                }
                Err(_) => bail!("broker {id} not serving after {timeout:?}; log:\n{}", self.log_tail(id)),
            }
        }
        Ok(())
    }

    /// The last lines of broker `id`'s log (for failure messages).
    pub fn log_tail(&self, id: u64) -> String {
        let text = match std::fs::read(&self.node(id).log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read the log: {e})"),
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Whether broker `id`'s whole log (all its runs) contains `needle`.
    pub fn log_contains(&self, id: u64, needle: &str) -> bool {
        self.log_contains_since(id, 0, needle)
    }

    /// The length of broker `id`'s log so far (a mark for
    /// [`Cluster::log_contains_since`]: the log spans restarts).
    pub fn log_len(&self, id: u64) -> u64 {
        std::fs::metadata(&self.node(id).log).map_or(0, |m| m.len())
    }

    /// Whether broker `id`'s log contains `needle` after byte `from`.
    pub fn log_contains_since(&self, id: u64, from: u64, needle: &str) -> bool {
        self.log_matches_since(id, from, needle) > 0
    }

    /// How many times broker `id`'s log contains `needle` after byte `from`.
    pub fn log_matches_since(&self, id: u64, from: u64, needle: &str) -> usize {
        std::fs::read(&self.node(id).log).map_or(0, |b| {
            let from = (from as usize).min(b.len());
            String::from_utf8_lossy(&b[from..]).matches(needle).count()
        })
    }

    /// Keeps the data and logs (for debugging a failure).
    pub fn keep(self) -> PathBuf {
        let mut s = self;
        for n in &mut s.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().expect("tempdir"));
        dir.keep()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `GET /metrics` of a broker: the Prometheus text.
pub fn scrape(metrics_addr: &str) -> anyhow::Result<String> {
    use std::io::Read;
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(metrics_addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {metrics_addr}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (head, rest) = body.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answered {head}");
    }
    Ok(rest.to_string())
}

/// The value of an unlabelled or exactly-labelled sample in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until broker `id` reports itself ready (health service
/// `ferrolog.ready`): its metadata and every replica it holds have caught
/// up with their leaders, e.g. after a wiped disk.
pub async fn wait_ready(cluster: &Cluster, id: u64, timeout: Duration) -> anyhow::Result<()> {
    let addr = cluster.node(id).addr.clone();
    eventually(&format!("broker {id} to be ready"), timeout, || {
        let addr = addr.clone();
        async move { if health(&addr, "ferrolog.ready").await { Ok(()) } else { Err("not ready".to_string()) } }
    })
    .await
}

async fn serving(addr: &str) -> bool {
    health(addr, "").await
}

async fn health(addr: &str, service: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else { return false };
    let Ok(ch) = endpoint.connect_timeout(Duration::from_millis(300)).timeout(Duration::from_secs(2)).connect().await
    else {
        return false;
    };
    let mut c = HealthClient::new(ch);
    matches!(
        c.check(HealthCheckRequest { service: service.to_string() }).await.map(|r| r.into_inner().status),
        Ok(s) if s == ServingStatus::Serving as i32
    )
}

/// A tmpfs mounted over a broker's data dir ([`Cluster::put_on_small_disk`]);
/// unmounted on drop.
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Bytes in use on it.
    pub fn used_bytes(&self) -> anyhow::Result<u64> {
        let out = std::process::Command::new("df").args(["-B1", "--output=used"]).arg(&self.path).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).with_context(|| format!("df output {text:?}"))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a broker still holding files open does not keep it mounted.
        let _ = run("umount", &["-l", &self.path.to_string_lossy()]);
    }
}

fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(cmd).args(args).output().with_context(|| format!("run {cmd}"))?;
    anyhow::ensure!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}
