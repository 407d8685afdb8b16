//! Uploading the pool to a device unmaps the cache pages it read (its own binary: it reads this
//! process's file-backed resident memory, which other tests running alongside would disturb).

mod common;

use common::{opts, tiny_phantom};
use suggestive::data::Dataset;
use suggestive::engine::batch::Feed;
use suggestive::phantom::PhantomLayout;
use tch::Device;

/// File-backed resident memory of this process (kB), from /proc/self/status.
fn rss_file_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_resident_upload_leaves_no_cache_pages_mapped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_phantom(
        &tmp.path().join("d"),
        &[("CBICA", 3), ("TCIA", 3)],
        PhantomLayout::Brats2019,
        2,
    );
    let (ds, _) = Dataset::load(&data, &opts(&tmp.path().join("cache"))).unwrap();
    let bytes = (ds.images().len() * 2 + ds.masks().len()) as u64;
    // A first upload pages in the libtorch code it runs, so that the measured one does not.
    drop(Feed::resident(&ds, Device::Cpu).unwrap());
    let touch = |ds: &Dataset| {
        let sum: f32 = ds.images().iter().step_by(512).map(|v| v.to_f32()).sum();
        sum + ds
            .masks()
            .iter()
            .step_by(512)
            .map(|&m| m as f32)
            .sum::<f32>()
    };
    std::hint::black_box(touch(&ds));
    let mapped = rss_file_kb();
    let feed = Feed::resident(&ds, Device::Cpu).unwrap();
    let after = rss_file_kb();
    assert!(
        mapped.saturating_sub(after) * 1024 >= bytes * 9 / 10,
        "{bytes} bytes of cache read, but file-backed RSS went only from {mapped} kB to {after} kB"
    );
    // The data is still there: the pages come back on the next read.
    let host = Feed::host(Device::Cpu);
    let all: Vec<usize> = (0..ds.num_slices()).collect();
    assert!(feed.images(&ds, &all).equal(&host.images(&ds, &all)));
}
