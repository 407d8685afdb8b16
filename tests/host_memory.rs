//! The allocator setting of engine::host_memory. It is process-wide and must come before any
//! thread allocates (as in `main`), so this test has no harness: its `main` is the process's,
//! and it runs itself a second time with glibc's defaults to compare.

use std::process::Command;

use suggestive::engine::host_memory::{keep_freed_blocks, Setting};
use suggestive::engine::nets::{Vae, VaeConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const DEFAULTS: &str = "SUGGESTIVE_TEST_ALLOCATOR_DEFAULTS";

fn minor_faults() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    u.ru_minflt
}

/// Page faults in the median step of what selection does on the CPU, after warm-up: encode a batch of 32
/// slices of 64×64 with a small VAE in float32, and a batch of 128 in float64 (the gradient
/// step's encoder), on a thread other than main (as the TUI's training thread). The float64
/// batch's first activations (64 MiB) lie above glibc's largest mmap threshold (32 MiB), so
/// with glibc's defaults they are mapped and unmapped in every step, whatever order the
/// smaller blocks were freed in.
fn faults_per_step() -> i64 {
    std::thread::spawn(|| {
        let _guard = tch::no_grad_guard();
        let cfg = VaeConfig {
            latent: 5,
            levels: 3,
            base: 16,
        };
        let vs = VarStore::new(Device::Cpu);
        let vae = Vae::new(&vs.root(), 4, 64, &cfg);
        let mut vs64 = VarStore::new(Device::Cpu);
        let vae64 = Vae::new(&vs64.root(), 4, 64, &cfg);
        vs64.copy(&vs).unwrap();
        vs64.double();
        let x = Tensor::randn([32, 4, 64, 64], (Kind::Float, Device::Cpu));
        let x64 = Tensor::randn([128, 4, 64, 64], (Kind::Double, Device::Cpu));
        let step = || {
            let z = vae.encode(&x).0.to_kind(Kind::Double);
            let z64 = vae64.encode(&x64).0;
            assert!(z.isfinite().all().int64_value(&[]) == 1);
            assert!(z64.isfinite().all().int64_value(&[]) == 1);
        };
        for _ in 0..3 {
            step();
        }
        // The median step: the heap may still grow once or twice as libtorch's worker threads
        // free blocks in a different order (a few thousand faults, once).
        let mut faults: Vec<i64> = (0..15)
            .map(|_| {
                let before = minor_faults();
                step();
                minor_faults() - before
            })
            .collect();
        faults.sort_unstable();
        faults[faults.len() / 2]
    })
    .join()
    .unwrap()
}

fn main() {
    if std::env::var_os(DEFAULTS).is_some() {
        println!("{}", faults_per_step());
        return;
    }
    if std::env::var("GLIBC_TUNABLES").is_ok() {
        eprintln!(
            "host_memory: skipped, GLIBC_TUNABLES is set (the user's allocator settings stand)"
        );
        return;
    }
    let setting = keep_freed_blocks();
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert_eq!(setting, Setting::Unsupported);
        return;
    }
    assert_eq!(setting, Setting::Applied);
    let ours = faults_per_step();
    let out = Command::new(std::env::current_exe().unwrap())
        .env(DEFAULTS, "1")
        .output()
        .expect("run the test again with glibc's defaults");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let defaults: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // The premise (glibc's defaults fault the step's buffers in again) and the effect.
    assert!(
        defaults > 1000,
        "glibc's defaults faulted only {defaults} pages per step: nothing left to save?"
    );
    assert!(
        ours * 20 < defaults,
        "with the setting a step faulted {ours} pages in, with glibc's defaults {defaults}"
    );
    println!("host_memory: ok (page faults in the median step: {ours} with the setting, {defaults} with glibc's defaults)");
}
