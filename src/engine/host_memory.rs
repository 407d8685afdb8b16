//! How the process's C allocator treats freed blocks, which libtorch's CPU tensors come from.
//!
//! libtorch allocates every CPU tensor with `posix_memalign` and frees it when the last
//! reference goes, so a training or encoding step allocates and frees the same megabytes of
//! activations over and over. With glibc's defaults, a block above the mmap threshold (which
//! glibc moves as it sees frees, up to 32 MiB) is a fresh `mmap` unmapped again on free, and a
//! free heap top above the trim threshold goes back to the kernel: the next step pays a page
//! fault for every 4 KiB it touches again. On the 2-core CPU machine that was 15 s of system
//! time in a 27 s run of the selection benchmark, and encoding the pool took 1.8× as long as
//! with the setting below; how much a run paid depended on the order of its first allocations,
//! a swing from run to run. (Measured with bench/select_bench.rs under each setting: glibc's
//! defaults, mmap threshold raised to its 32 MiB ceiling, mmap off, tcmalloc, jemalloc. mmap
//! off matched tcmalloc; the 32 MiB ceiling still mapped the float64 gradient stage's
//! 150 MB buffers.)
//!
//! So: no mmap for heap blocks (every freed block stays in the heap for the next step), the
//! heap's free top kept up to 2 GiB, and one arena for all threads. Threads other than main
//! otherwise allocate from arenas of 64 MiB heaps that glibc unmaps as soon as one is empty,
//! whatever the thresholds (the TUI trains on such a thread); the arena lock this adds is taken
//! a few hundred times per training step, against milliseconds of convolutions.
//!
//! The cost: memory freed after a peak stays with the process (reused, not returned, up to
//! 2 GiB). The memory-over-rounds benchmark checks that it does not grow from round to round.
//! Memory maps made on purpose (the slice cache) are not heap blocks and are unaffected.

/// Hand the top of the heap back to the kernel only when more than this is free there
/// (the largest value `mallopt` takes, 2 GiB).
pub const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;

use std::sync::OnceLock;

/// What [`keep_freed_blocks`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// Heap blocks never mapped, trim threshold raised, one arena.
    Applied,
    /// `GLIBC_TUNABLES` names malloc settings: the user's choice stands.
    UserTunables,
    /// Not glibc (or glibc refused a value): the allocator's defaults stand.
    Unsupported,
}

/// Keep freed blocks in the heap (no mmap for them), its free top up to [`TRIM_THRESHOLD`],
/// and one arena for all threads (see the module notes). Call once, early in `main`, before threads start allocating.
pub fn keep_freed_blocks() -> Setting {
    let setting = if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        Setting::UserTunables
    } else {
        apply()
    };
    *CHOSEN.get_or_init(|| setting)
}

static CHOSEN: OnceLock<Setting> = OnceLock::new();

/// How this process's allocator is set, in words (`suggestive info`).
pub fn describe() -> &'static str {
    match CHOSEN.get() {
        Some(Setting::Applied) => {
            "glibc malloc, freed blocks kept (no mmap, trim above 2 GiB, one arena)"
        }
        Some(Setting::UserTunables) => "glibc malloc as GLIBC_TUNABLES sets it",
        Some(Setting::Unsupported) => "the C library's defaults (not glibc)",
        None => "the C library's defaults",
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Setting {
    // SAFETY: mallopt only changes three allocator parameters; it is safe to call at any time.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    };
    if ok {
        Setting::Applied
    } else {
        Setting::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Setting {
    Setting::Unsupported
}
