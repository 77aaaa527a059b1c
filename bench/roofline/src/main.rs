//! `ferrolog-roofline`: the least work a replicated, durable append can do
//! on this machine, to measure Ferrolog against.
//!
//! Three processes on loopback, no consensus logic, no indexes, no checksums:
//! producers send batches over TCP to a leader; the leader appends each batch
//! to its file, forwards it to two followers that append it to theirs, and a
//! batch is acknowledged once the leader's group fsync covers it and one
//! follower's fsync does too (a majority of 3, as `acks=all` needs). Every
//! process syncs with group commit (one `fdatasync` covers every batch
//! written before it started).
//!
//! ```text
//! ferrolog-roofline run [--producers K] [--record-size B] [--batch-records N] [--duration S] [--dir DIR]
//! ```
//!
//! Closed loop like `ferrolog bench produce`: each producer keeps one batch
//! in flight. Prints records/s, MB/s and batch latency percentiles; `--json`
//! prints one JSON object instead.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::net::TcpListener;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;

/// Largest batch accepted (a bound on the allocation a frame may ask for).
const MAX_FRAME: usize = 64 << 20;

fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_be_bytes(head[4..].try_into().expect("8 bytes"));
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(seq)
}

fn write_frame(w: &mut impl Write, seq: u64, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&(payload.len() as u32).to_be_bytes())?;
    w.write_all(&seq.to_be_bytes())?;
    w.write_all(payload)
}

/// Group commit over one file: `written` batches are covered by the next
/// `fdatasync`; `synced` is the highest sequence known durable.
struct Log {
    file: Mutex<(File, u64)>,
    synced: Mutex<u64>,
    cond: Condvar,
}

impl Log {
    fn open(path: &std::path::Path) -> anyhow::Result<Arc<Self>> {
        let file =
            File::options().create(true).append(true).open(path).with_context(|| format!("open {}", path.display()))?;
        Ok(Arc::new(Log { file: Mutex::new((file, 0)), synced: Mutex::new(0), cond: Condvar::new() }))
    }

    /// Appends (unsynced) and records `seq` as written.
    fn append(&self, seq: u64, data: &[u8]) -> std::io::Result<()> {
        let mut f = self.file.lock().expect("file lock");
        f.0.write_all(data)?;
        f.1 = f.1.max(seq);
        drop(f);
        self.cond.notify_all();
        Ok(())
    }

    /// The sync loop: whenever something was written past `synced`, one
    /// fdatasync covers all of it. Calls `on_sync` with the new mark.
    fn sync_loop(self: Arc<Self>, mut on_sync: impl FnMut(u64)) {
        loop {
            let (target, file) = {
                let mut synced = self.synced.lock().expect("sync lock");
                loop {
                    let written = self.file.lock().expect("file lock").1;
                    if written > *synced {
                        break;
                    }
                    synced = self.cond.wait_timeout(synced, Duration::from_millis(50)).expect("sync wait").0;
                }
                drop(synced);
                let f = self.file.lock().expect("file lock");
                (f.1, f.0.try_clone().expect("clone the file handle"))
            };
            // durability: the roofline's group fsync (same promise as
            // Ferrolog's acks=all: acknowledged only once synced).
            file.sync_data().expect("fdatasync");
            *self.synced.lock().expect("sync lock") = target;
            self.cond.notify_all();
            on_sync(target);
        }
    }
}

/// A follower: appends what the leader sends, answers with its synced mark.
fn follower(listen: &str, path: PathBuf) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("{}", l.local_addr()?);
    std::io::stdout().flush()?;
    let (conn, _) = l.accept()?;
    conn.set_nodelay(true)?;
    let log = Log::open(&path)?;
    let mut ack = conn.try_clone()?;
    let syncer = log.clone();
    std::thread::spawn(move || {
        syncer.sync_loop(move |mark| {
            let _ = ack.write_all(&mark.to_be_bytes());
        })
    });
    let mut r = BufReader::with_capacity(1 << 20, conn);
    let mut buf = Vec::new();
    loop {
        let seq = match read_frame(&mut r, &mut buf) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        log.append(seq, &buf)?;
    }
}

/// What the leader knows: the local synced mark (in `Log`) and each
/// follower's acknowledged mark.
struct Acks {
    followers: Mutex<[u64; 2]>,
    cond: Condvar,
}

/// The leader: one thread per producer connection, forwarding to both
/// followers and answering once a majority (itself + one follower) synced.
fn leader(listen: &str, path: PathBuf, followers: &[String]) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)?;
    let log = Log::open(&path)?;
    let acks = Arc::new(Acks { followers: Mutex::new([0, 0]), cond: Condvar::new() });
    let mut links = Vec::new();
    for (i, f) in followers.iter().enumerate() {
        let s = TcpStream::connect(f).with_context(|| format!("connect follower {f}"))?;
        s.set_nodelay(true)?;
        let mut r = s.try_clone()?;
        let acks = acks.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 8];
            while r.read_exact(&mut b).is_ok() {
                acks.followers.lock().expect("acks lock")[i] = u64::from_be_bytes(b);
                acks.cond.notify_all();
            }
        });
        links.push(s);
    }
    let links = Arc::new(Mutex::new(links));
    {
        let acks = acks.clone();
        let syncer = log.clone();
        std::thread::spawn(move || {
            syncer.sync_loop(move |_| {
                // Wake waiters; they read the synced mark from the log.
                let _g = acks.followers.lock().expect("acks lock");
                acks.cond.notify_all();
            })
        });
    }
    println!("{}", l.local_addr()?);
    std::io::stdout().flush()?;
    let next_seq = Arc::new(Mutex::new(0u64));
    for conn in l.incoming() {
        let conn = conn?;
        conn.set_nodelay(true)?;
        let (log, acks, links, next_seq) = (log.clone(), acks.clone(), links.clone(), next_seq.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut w = conn.try_clone()?;
            let mut r = BufReader::with_capacity(1 << 20, conn);
            let mut buf = Vec::new();
            loop {
                let id = read_frame(&mut r, &mut buf)?;
                // One sequence for the local file and the followers' streams:
                // taken and forwarded in the same order under one lock.
                let seq = {
                    let mut links = links.lock().expect("links lock");
                    let mut n = next_seq.lock().expect("seq lock");
                    *n += 1;
                    let seq = *n;
                    log.append(seq, &buf)?;
                    for l in links.iter_mut() {
                        write_frame(l, seq, &buf)?;
                    }
                    seq
                };
                let mut f = acks.followers.lock().expect("acks lock");
                loop {
                    let local = *log.synced.lock().expect("sync lock");
                    if local >= seq && f.iter().any(|m| *m >= seq) {
                        break;
                    }
                    f = acks.cond.wait(f).expect("acks wait");
                }
                drop(f);
                write_frame(&mut w, id, &[])?;
            }
        });
    }
    Ok(())
}

fn spawn_role(args: &[&str]) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?).args(args).stdout(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().context("child stdout")?;
    let mut addr = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b)? == 1 && b[0] != b'\n' {
        addr.push(b[0]);
    }
    Ok((child, String::from_utf8(addr)?))
}

struct RunArgs {
    producers: usize,
    record_size: usize,
    batch_records: usize,
    duration: Duration,
    dir: Option<PathBuf>,
    json: bool,
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let p = |n: &str| tmp.path().join(n).display().to_string();
    let (mut f1, a1) = spawn_role(&["follower", "127.0.0.1:0", &p("follower1.log")])?;
    let (mut f2, a2) = spawn_role(&["follower", "127.0.0.1:0", &p("follower2.log")])?;
    let (mut leader, la) = spawn_role(&["leader", "127.0.0.1:0", &p("leader.log"), &a1, &a2])?;
    let batch = vec![0x5Au8; a.record_size * a.batch_records];
    let deadline = Instant::now() + a.duration;
    let mut threads = Vec::new();
    for _ in 0..a.producers {
        let (la, batch) = (la.clone(), batch.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            let s = TcpStream::connect(&la)?;
            s.set_nodelay(true)?;
            let mut w = BufWriter::new(s.try_clone()?);
            let mut r = BufReader::new(s);
            let mut lat = Vec::new();
            let mut buf = Vec::new();
            let mut id = 0;
            while Instant::now() < deadline {
                id += 1;
                let t = Instant::now();
                write_frame(&mut w, id, &batch)?;
                w.flush()?;
                if read_frame(&mut r, &mut buf)? != id {
                    bail!("answer out of order");
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok(lat)
        }));
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().map_err(|_| anyhow::anyhow!("producer panicked"))??);
    }
    let secs = started.elapsed().as_secs_f64();
    for c in [&mut leader, &mut f1, &mut f2] {
        let _ = c.kill();
        let _ = c.wait();
    }
    lat.sort_unstable();
    let pct =
        |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let records = lat.len() * a.batch_records;
    let rps = records as f64 / secs;
    let mbps = rps * a.record_size as f64 / 1e6;
    if a.json {
        println!(
            "{{\"records\":{records},\"seconds\":{secs:.3},\"records_per_sec\":{rps:.0},\"mb_per_sec\":{mbps:.2},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
            pct(0.5) as f64 / 1e3,
            pct(0.99) as f64 / 1e3,
            pct(0.999) as f64 / 1e3,
            lat.last().copied().unwrap_or(0) as f64 / 1e3
        );
    } else {
        println!(
            "roofline: {} producers, {} B records, {} per batch: {rps:.0} records/s, {mbps:.2} MB/s; batch latency p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            a.producers,
            a.record_size,
            a.batch_records,
            pct(0.5),
            pct(0.99),
            pct(0.999),
            lat.last().copied().unwrap_or(0)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("follower") if args.len() == 3 => follower(&args[1], PathBuf::from(&args[2])),
        Some("leader") if args.len() == 5 => leader(&args[1], PathBuf::from(&args[2]), &args[3..]),
        Some("run") => {
            let mut a = RunArgs {
                producers: 1,
                record_size: 1024,
                batch_records: 16,
                duration: Duration::from_secs(10),
                dir: None,
                json: false,
            };
            let mut it = args[1..].iter();
            while let Some(k) = it.next() {
                let mut v = || it.next().context("missing value");
                match k.as_str() {
                    "--producers" => a.producers = v()?.parse()?,
                    "--record-size" => a.record_size = v()?.parse()?,
                    "--batch-records" => a.batch_records = v()?.parse()?,
                    "--duration" => a.duration = Duration::from_secs_f64(v()?.parse()?),
                    "--dir" => a.dir = Some(PathBuf::from(v()?)),
                    "--json" => a.json = true,
                    other => bail!("unknown argument {other}"),
                }
            }
            run(a)
        }
        _ => bail!(
            "usage: ferrolog-roofline run [--producers K] [--record-size B] [--batch-records N] [--duration S] [--dir DIR] [--json]"
        ),
    }
}
