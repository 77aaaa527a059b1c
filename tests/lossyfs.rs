//! The power-loss filesystem (`ferrolog_tests::lossyfs`) mounted for real
//! through `/dev/fuse` (needs root, as CI runs): what a power cut keeps and
//! what it drops. The storage crash test (`storage_crash.rs`) and the
//! cluster power-loss tests run RocksDB and whole brokers on it.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ferrolog_tests::lossyfs::LossyDisk;

/// A mounted disk over a fresh backing dir.
struct Mounted {
    disk: LossyDisk,
    mnt: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

fn mounted() -> anyhow::Result<Mounted> {
    let dir = tempfile::tempdir()?;
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&backing)?;
    std::fs::create_dir(&mnt)?;
    let disk = LossyDisk::mount(&backing, &mnt)?;
    Ok(Mounted { disk, mnt, backing, _dir: dir })
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

#[test]
fn a_write_without_fsync_is_gone_after_a_power_cut_and_one_with_fsync_survives() -> anyhow::Result<()> {
    let m = mounted()?;
    let path = m.mnt.join("log");
    let mut f = File::create(&path)?;
    f.write_all(b"synced")?;
    f.sync_data()?;
    f.write_all(b" unsynced")?;
    // close(2) is not a sync.
    drop(f);
    // Readers see the cache, as they would see the page cache.
    assert_eq!(read(&path)?, b"synced unsynced");
    assert_eq!(std::fs::metadata(&path)?.len(), 15);
    // Only the synced bytes reached the backing file.
    assert_eq!(std::fs::read(m.backing.join("log"))?, b"synced");
    assert_eq!(m.disk.unsynced_bytes(), 9);

    let dropped = m.disk.power_cut();
    assert_eq!(dropped, 9);
    assert_eq!(read(&path)?, b"synced");
    assert_eq!(std::fs::metadata(&path)?.len(), 6);
    let stats = m.disk.stats();
    assert_eq!((stats.cuts, stats.dropped_bytes, stats.dropped_files), (1, 9, 1));
    Ok(())
}

#[test]
fn fsync_writes_the_cache_back_with_overwrites_and_holes() -> anyhow::Result<()> {
    let m = mounted()?;
    let path = m.mnt.join("f");
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    f.write_all(&[1u8; 100])?;
    std::os::unix::fs::FileExt::write_all_at(&f, &[2u8; 10], 50)?;
    // A hole between 100 and 200.
    std::os::unix::fs::FileExt::write_all_at(&f, &[3u8; 5], 200)?;
    f.sync_all()?;
    drop(f);
    m.disk.power_cut();
    let got = read(&path)?;
    let mut want = vec![1u8; 100];
    want[50..60].fill(2);
    want.resize(200, 0);
    want.extend_from_slice(&[3u8; 5]);
    assert_eq!(got, want);
    assert_eq!(std::fs::read(m.backing.join("f"))?, want);
    Ok(())
}

#[test]
fn an_unsynced_truncation_is_undone_by_a_cut_and_a_synced_one_is_kept() -> anyhow::Result<()> {
    let m = mounted()?;
    let path = m.mnt.join("t");
    let mut f = File::create(&path)?;
    f.write_all(&[7u8; 100])?;
    f.sync_all()?;
    f.set_len(10)?;
    assert_eq!(std::fs::metadata(&path)?.len(), 10);
    drop(f);
    m.disk.power_cut();
    assert_eq!(read(&path)?, vec![7u8; 100], "the truncation was never synced");

    let f = OpenOptions::new().write(true).open(&path)?;
    f.set_len(10)?;
    f.sync_all()?;
    drop(f);
    m.disk.power_cut();
    assert_eq!(read(&path)?, vec![7u8; 10]);
    // O_TRUNC is a truncation too: cached until a sync.
    drop(File::create(&path)?);
    assert_eq!(std::fs::metadata(&path)?.len(), 0);
    m.disk.power_cut();
    assert_eq!(read(&path)?, vec![7u8; 10], "an O_TRUNC that was never synced");
    Ok(())
}

#[test]
fn create_rename_unlink_and_mkdir_survive_a_cut_at_once() -> anyhow::Result<()> {
    let m = mounted()?;
    std::fs::create_dir(m.mnt.join("dir"))?;
    let mut f = File::create(m.mnt.join("dir/new"))?;
    f.write_all(b"never synced")?;
    drop(f);
    std::fs::write(m.mnt.join("gone"), b"")?;
    std::fs::remove_file(m.mnt.join("gone"))?;
    // The write-temp, fsync, rename pattern (RocksDB's CURRENT, our node id).
    let mut tmp = File::create(m.mnt.join("CURRENT.tmp"))?;
    tmp.write_all(b"MANIFEST-000001\n")?;
    tmp.sync_all()?;
    drop(tmp);
    std::fs::rename(m.mnt.join("CURRENT.tmp"), m.mnt.join("CURRENT"))?;
    m.disk.power_cut();

    assert_eq!(read(&m.mnt.join("dir/new"))?, b"", "a created file survives, with only its synced bytes");
    assert!(!m.mnt.join("gone").exists());
    assert!(!m.mnt.join("CURRENT.tmp").exists());
    assert_eq!(read(&m.mnt.join("CURRENT"))?, b"MANIFEST-000001\n");
    let mut names: Vec<String> = std::fs::read_dir(&m.mnt)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, ["CURRENT", "dir"]);
    // A renamed file keeps its unsynced data under its new name until the cut.
    let mut g = File::create(m.mnt.join("a"))?;
    g.write_all(b"xyz")?;
    std::fs::rename(m.mnt.join("a"), m.mnt.join("b"))?;
    g.sync_data()?;
    drop(g);
    m.disk.power_cut();
    assert_eq!(read(&m.mnt.join("b"))?, b"xyz");
    Ok(())
}

#[test]
fn a_handle_opened_before_a_cut_belongs_to_the_dead_machine() -> anyhow::Result<()> {
    let m = mounted()?;
    let mut f = File::create(m.mnt.join("h"))?;
    f.write_all(b"a")?;
    m.disk.power_cut();
    let err = f.write_all(b"b").expect_err("a write through a handle from before the cut must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(f.sync_all().is_err());
    drop(f);
    assert_eq!(read(&m.mnt.join("h"))?, b"");
    Ok(())
}

#[test]
fn an_o_dsync_write_is_durable_when_it_returns() -> anyhow::Result<()> {
    let m = mounted()?;
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DSYNC).open(m.mnt.join("d"))?;
    f.write_all(b"durable")?;
    drop(f);
    m.disk.power_cut();
    assert_eq!(read(&m.mnt.join("d"))?, b"durable");
    Ok(())
}

#[test]
fn large_sequential_writes_are_cached_and_synced_whole() -> anyhow::Result<()> {
    // An SST-sized file written in RocksDB-sized chunks: 32 MiB in 1 MiB writes.
    let m = mounted()?;
    let path = m.mnt.join("000042.sst");
    let mut f = File::create(&path)?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for _ in 0..32 {
        f.write_all(&chunk)?;
    }
    assert_eq!(m.disk.unsynced_bytes(), 32 << 20);
    f.sync_all()?;
    assert_eq!(m.disk.unsynced_bytes(), 0);
    drop(f);
    m.disk.power_cut();
    let got = read(&path)?;
    assert_eq!(got.len(), 32 << 20);
    assert!(got.chunks(1 << 20).all(|c| c == chunk.as_slice()));
    Ok(())
}

#[test]
fn a_large_directory_lists_every_entry_once_while_it_is_emptied() -> anyhow::Result<()> {
    // More entries than one readdir call returns, deleted while listed (as
    // remove_dir_all does): a listing must neither skip nor repeat.
    let m = mounted()?;
    let dir = m.mnt.join("db");
    std::fs::create_dir(&dir)?;
    for i in 0..500 {
        std::fs::write(dir.join(format!("{i:06}.sst")), b"x")?;
    }
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        std::fs::remove_file(e.path())?;
        seen.push(e.file_name());
    }
    assert_eq!(seen.len(), 500, "every entry listed exactly once");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 500);
    std::fs::remove_dir(&dir)?;
    // And remove_dir_all of a large tree works.
    std::fs::create_dir(&dir)?;
    for i in 0..300 {
        std::fs::write(dir.join(format!("{i:06}.log")), b"y")?;
    }
    std::fs::remove_dir_all(&dir)?;
    assert!(!dir.exists());
    Ok(())
}
