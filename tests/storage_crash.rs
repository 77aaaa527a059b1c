//! Crash safety of the store: a child process appends across many Raft
//! groups and reports every append as soon as openraft would be told it is
//! flushed; the parent SIGKILLs it mid-stream, reopens the store, and checks
//! that every reported entry is present and intact and that no group has a
//! hole. Several rounds: each child resumes where the last one's log ends.
//!
//! The child is this same test binary, re-run with `--exact crash_child
//! --ignored` and the directory in an environment variable.
//!
//! A SIGKILL keeps the page cache, so it cannot catch a store that
//! acknowledges before its fsync. The power-loss variant runs the store on
//! `lossyfs` (`ferrolog_tests::lossyfs`) and drops every unsynced byte
//! after each kill; a store that skips its fsyncs passes the SIGKILL test
//! and fails that one (both shown below).

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use anyhow::bail;
use ferrolog_partition::Command as PartitionCommand;
use ferrolog_raft::LogStore;
use ferrolog_raft::PartitionEntry;
use ferrolog_raft::types::log_id;
use ferrolog_storage::Storage;
use ferrolog_storage::StorageConfig;
use ferrolog_tests::lossyfs::LossyDisk;
use ferrolog_tests::payload_for;
use ferrolog_tests::seed;
use ferrolog_types::Batch;
use ferrolog_types::BatchHeader;
use ferrolog_types::GroupId;
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use rand::Rng;
use rand::SeedableRng;

const GROUPS: u64 = 48;
/// Groups whose log is also purged from time to time (every 8th).
const PURGING: u64 = 8;
const ENV_DIR: &str = "FERROLOG_CRASH_DIR";
const ENV_SEED: &str = "FERROLOG_CRASH_SEED";
/// Set to `1`: the child's store skips its WAL fsyncs (`skip_syncs`).
const ENV_SKIP_SYNCS: &str = "FERROLOG_CRASH_SKIP_SYNCS";

fn payload_len(group: u64, index: u64) -> usize {
    64 + ((group * 31 + index * 7) % 900) as usize
}

fn entry(group: u64, index: u64, term: u64) -> ferrolog_raft::types::alias::Entry {
    let records = payload_for(group, index, payload_len(group, index));
    let batch = Batch::seal(BatchHeader::plain(1, index as i64), records.into());
    RaftEntry::new_normal(log_id(term, 1, index), PartitionEntry::append(batch))
}

/// The child: appends forever in every group and prints `F group last_index`
/// after each flush callback, `V group term` after each durable vote.
#[test]
#[ignore = "run by crash_consistency_under_sigkill as a child process"]
fn crash_child() -> anyhow::Result<()> {
    let dir = std::env::var(ENV_DIR).context("crash_child runs only as a child of the crash test")?;
    let seed: u64 = std::env::var(ENV_SEED)?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let mut config = StorageConfig::new(&dir);
        config.skip_syncs = std::env::var(ENV_SKIP_SYNCS).is_ok_and(|v| v == "1");
        let storage = Arc::new(Storage::open(&config)?);
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for g in 1..=GROUPS {
            let storage = storage.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ g);
                let mut log = LogStore::new(storage, GroupId(g));
                let state = log.get_log_state().await?;
                let mut next = state.last_log_id.map(|l| l.index + 1).unwrap_or(1);
                // A new term per round: its vote must be durable when save_vote returns.
                let term = log.read_vote().await?.map(|v| v.leader_id.term).unwrap_or(0) + 1;
                log.save_vote(&openraft::impls::Vote::new(term, 1)).await?;
                writeln!(out.lock().expect("stdout lock"), "V {g} {term}")?;
                loop {
                    let n = rng.random_range(1..=4u64);
                    let entries: Vec<_> = (next..next + n).map(|i| entry(g, i, term)).collect();
                    let (cb, flushed) = ferrolog_raft::flush_signal();
                    log.append(entries, cb).await?;
                    flushed.await?;
                    next += n;
                    {
                        let mut o = out.lock().expect("stdout lock");
                        writeln!(o, "F {g} {}", next - 1)?;
                        o.flush()?;
                    }
                    if g % PURGING == 0 && next % 50 < n && next > 40 {
                        log.purge(log_id(term, 1, next - 30)).await?;
                    }
                }
                #[allow(unreachable_code)]
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

#[test]
fn crash_consistency_under_sigkill() -> anyhow::Result<()> {
    let seed = seed("crash_consistency_under_sigkill");
    let dir = tempfile::tempdir()?;
    crash_rounds(seed, dir.path(), None, false, 8)?;
    Ok(())
}

#[test]
fn crash_consistency_under_power_loss() -> anyhow::Result<()> {
    let seed = seed("crash_consistency_under_power_loss");
    let (_dir, disk) = lossy_disk()?;
    let dropped = crash_rounds(seed, disk.mountpoint(), Some(&disk), false, 6)?;
    // The cuts really dropped data (RocksDB's own unsynced writes at least),
    // so the rounds tested something a SIGKILL alone does not.
    assert!(dropped > 0, "the power cuts dropped nothing");
    eprintln!("power cuts dropped {dropped} unsynced bytes in all; {:?}", disk.stats());
    Ok(())
}

/// The test can fail: a store that skips its fsyncs loses acknowledged
/// entries at a power cut, while a SIGKILL (the page cache survives) does
/// not notice.
#[test]
fn power_loss_catches_a_store_that_skips_its_fsyncs_and_sigkill_does_not() -> anyhow::Result<()> {
    let seed = seed("power_loss_catches_a_store_that_skips_its_fsyncs_and_sigkill_does_not");
    let dir = tempfile::tempdir()?;
    crash_rounds(seed, dir.path(), None, true, 2).context("SIGKILL keeps the page cache: nothing is lost")?;
    let (_dir, disk) = lossy_disk()?;
    let err = crash_rounds(seed, disk.mountpoint(), Some(&disk), true, 1)
        .expect_err("a power cut must lose entries acknowledged without an fsync");
    assert!(format!("{err:#}").contains("acknowledged up to"), "{err:#}");
    Ok(())
}

fn lossy_disk() -> anyhow::Result<(tempfile::TempDir, LossyDisk)> {
    let dir = tempfile::tempdir()?;
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir(&backing)?;
    std::fs::create_dir(&mnt)?;
    let disk = LossyDisk::mount(&backing, &mnt)?;
    Ok((dir, disk))
}

/// `rounds` rounds of: a child appends, is SIGKILLed after a random number
/// of acknowledged appends, (on a lossy disk) the power is cut, and the
/// store is checked against every acknowledgement. Returns the bytes the
/// power cuts dropped.
fn crash_rounds(seed: u64, dir: &Path, disk: Option<&LossyDisk>, skip_syncs: bool, rounds: u64) -> anyhow::Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe()?;
    let mut flushed = vec![0u64; GROUPS as usize + 1];
    let mut voted = vec![0u64; GROUPS as usize + 1];
    let mut dropped = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(ENV_DIR, dir)
            .env(ENV_SEED, (seed + round).to_string())
            .env(ENV_SKIP_SYNCS, if skip_syncs { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        // Kill after a random number of acknowledged appends.
        let kill_after = rng.random_range(500..3000u64);
        let mut acked = 0u64;
        let mut lines = BufReader::new(stdout).lines();
        let mut killed = false;
        for line in lines.by_ref() {
            let line = line?;
            record(&line, &mut flushed, &mut voted)?;
            if line.starts_with('F') {
                acked += 1;
            }
            if acked >= kill_after && !killed {
                kill9(child.id())?;
                killed = true;
                // Keep reading: lines already in the pipe were printed before
                // the kill, so they are acknowledgements too.
            }
        }
        let status = child.wait()?;
        if !killed {
            bail!("child exited on its own before the kill: {status}");
        }
        let cut = match disk {
            // The child is reaped: nothing writes during the cut.
            Some(d) => {
                let bytes = d.power_cut();
                dropped += bytes;
                format!(", power cut dropped {bytes} unsynced bytes")
            }
            None => String::new(),
        };
        eprintln!("round {round}: killed after {acked} acknowledged appends{cut}");
        verify(dir, &flushed, &voted).with_context(|| format!("round {round}, seed {seed}"))?;
    }
    Ok(dropped)
}

fn record(line: &str, flushed: &mut [u64], voted: &mut [u64]) -> anyhow::Result<()> {
    let mut parts = line.split_whitespace();
    let (kind, g, v) = (parts.next(), parts.next(), parts.next());
    let (Some(kind), Some(g), Some(v)) = (kind, g, v) else { return Ok(()) }; // test-harness chatter
    let (Ok(g), Ok(v)) = (g.parse::<usize>(), v.parse::<u64>()) else { return Ok(()) };
    match kind {
        "F" => flushed[g] = flushed[g].max(v),
        "V" => voted[g] = voted[g].max(v),
        _ => {}
    }
    Ok(())
}

#[allow(unsafe_code)]
fn kill9(pid: u32) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
    let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    if r != 0 {
        bail!("kill({pid}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn verify(dir: &std::path::Path, flushed: &[u64], voted: &[u64]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let storage = Arc::new(Storage::open(&StorageConfig::new(dir))?);
        for g in 1..=GROUPS {
            let mut log = LogStore::new(storage.clone(), GroupId(g));
            let state = log.get_log_state().await?;
            let last = state.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
            let first = state.last_purged_log_id.as_ref().map(|l| l.index + 1).unwrap_or(1);
            if last < flushed[g as usize] {
                bail!("group {g}: acknowledged up to {} but the log ends at {last}", flushed[g as usize]);
            }
            let vote = log.read_vote().await?.map(|v| v.leader_id.term).unwrap_or(0);
            if vote < voted[g as usize] {
                bail!("group {g}: vote for term {} was acknowledged but term {vote} is stored", voted[g as usize]);
            }
            let entries = log.try_get_log_entries(first..=last).await?;
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id().index).collect();
            let want: Vec<u64> = (first..=last).collect();
            if indexes != want {
                bail!("group {g}: hole in the log: expected {first}..={last}, found {} entries", indexes.len());
            }
            for e in &entries {
                let i = e.log_id().index;
                let EntryPayload::Normal(PartitionEntry { cmd: PartitionCommand::Append(b), .. }) = &e.payload else {
                    bail!("group {g} index {i}: unexpected payload");
                };
                b.verify()?;
                if b.records.as_ref() != payload_for(g, i, payload_len(g, i)).as_slice() {
                    bail!("group {g} index {i}: payload differs from what was written");
                }
            }
        }
        Ok(())
    })
}

#[test]
fn crash_test_detects_a_lost_acknowledged_entry() -> anyhow::Result<()> {
    // The checker itself must fail when an acknowledged entry is missing:
    // write 10 entries, claim 11 were acknowledged.
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let storage = Arc::new(Storage::open(&StorageConfig::new(dir.path()))?);
        for g in 1..=GROUPS {
            let mut log = LogStore::new(storage.clone(), GroupId(g));
            let (cb, flushed) = ferrolog_raft::flush_signal();
            log.append((1..=10).map(|i| entry(g, i, 1)), cb).await?;
            flushed.await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let mut flushed = vec![10u64; GROUPS as usize + 1];
    let voted = vec![0u64; GROUPS as usize + 1];
    verify(dir.path(), &flushed, &voted)?;
    flushed[5] = 11;
    let err = verify(dir.path(), &flushed, &voted).expect_err("a missing acknowledged entry must be flagged");
    assert!(err.to_string().contains("acknowledged up to 11"), "{err}");
    Ok(())
}
