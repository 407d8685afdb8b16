//! CUDA autocast (float16 mixed precision) without libtorch's deprecation warnings.
//!
//! tch 0.24 enters autocast through `at::autocast::is_enabled` / `set_enabled`, which libtorch
//! 2.11 deprecates with a warning on every call: three lines of stderr per training step of an
//! fp16 session (1.8 MB over the demo on an H200). libtorch prints warnings through its own
//! logger, whose threshold is the exported global `FLAGS_caffe2_log_level` (0 info, 1 warning,
//! 2 error). Entering and leaving autocast raise that threshold to errors; the forward pass in
//! between runs at the threshold the process had, so its warnings still show.

use std::sync::Mutex;

extern "C" {
    /// libc10's log threshold (`C10_DEFINE_int(caffe2_log_level, ...)`, a plain global).
    static mut FLAGS_caffe2_log_level: i32;
}

const ERROR: i32 = 2;

/// How many threads are inside a quiet section, and the threshold to restore after the last.
static QUIET: Mutex<(u32, i32)> = Mutex::new((0, 0));

fn log_level() -> i32 {
    // SAFETY: a 4-byte global that libtorch only reads while logging; read as a plain value.
    unsafe { std::ptr::read_volatile(std::ptr::addr_of!(FLAGS_caffe2_log_level)) }
}

fn set_log_level(level: i32) {
    // SAFETY: as above; written only here, under QUIET's lock.
    unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!(FLAGS_caffe2_log_level), level) }
}

/// While alive, libtorch logs errors only (counted across threads: the lanes of `--devices`
/// enter and leave autocast concurrently).
pub struct Quiet(());

impl Quiet {
    pub fn enter() -> Quiet {
        let mut q = QUIET.lock().unwrap_or_else(|e| e.into_inner());
        if q.0 == 0 {
            q.1 = log_level();
            set_log_level(q.1.max(ERROR));
        }
        q.0 += 1;
        Quiet(())
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        let mut q = QUIET.lock().unwrap_or_else(|e| e.into_inner());
        q.0 -= 1;
        if q.0 == 0 {
            set_log_level(q.1);
        }
    }
}

/// Runs `f` under CUDA fp16 autocast (a plain call where CUDA is absent, as tch::autocast).
pub fn autocast_fp16<T>(f: impl FnOnce() -> T) -> T {
    let entering = Quiet::enter();
    let mut entering = Some(entering);
    let out = tch::autocast(true, || {
        drop(entering.take());
        let r = f();
        entering = Some(Quiet::enter()); // for the exit path's warnings
        r
    });
    drop(entering);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    /// An ATen warning on the CPU: writing a 2-element result into a 3-element `out=` tensor
    /// resizes it with a warning.
    fn warn() {
        let (a, b) = (
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
        );
        let out = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let _ = a.add_out(&out, &b);
    }

    #[test]
    fn quiet_sections_silence_libtorch_warnings_and_restore_the_threshold() {
        let _one_at_a_time = crate::tui::stderr_log::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr.log");
        let before = log_level();
        let written = {
            let log = crate::tui::stderr_log::StderrToLog::start(&path).unwrap();
            {
                let _q = Quiet::enter();
                let _nested = Quiet::enter();
                assert_eq!(log_level(), before.max(ERROR));
                warn();
            }
            let quiet = log.written();
            warn();
            (quiet, log.written())
        };
        assert_eq!(log_level(), before);
        assert_eq!(written.0, 0, "a warning got through the quiet section");
        assert!(
            written.1 > 0,
            "the warning itself was not printed: the test proves nothing"
        );
        // autocast_fp16 leaves the threshold as it found it (on a CPU, tch runs `f` directly).
        assert_eq!(autocast_fp16(log_level), before);
        assert_eq!(log_level(), before);
    }
}
