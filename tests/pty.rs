//! The interface in a terminal that never answers: a pseudo-terminal whose other end reads the
//! output and types keys but sends no reply to the capability query that the default image
//! setting makes (as a Linux console, screen, or a terminal behind some SSH clients). Keys must
//! act from the first one, and the terminal must be restored on exit.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const ROWS: u16 = 48;
const COLS: u16 = 160;

/// A pseudo-terminal pair: the test holds the master end, the program gets the slave end.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors, which are then owned here.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn termios_of(fd: &OwnedFd) -> libc::termios {
    // SAFETY: tcgetattr fills the struct for a valid terminal descriptor.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t
    }
}

/// The screen as the program drew it so far.
struct Screen(Arc<Mutex<vt100::Parser>>);

impl Screen {
    fn text(&self) -> String {
        self.0.lock().unwrap().screen().contents()
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.text();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn keys_act_from_the_first_one_when_the_terminal_never_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = tiny_live_session(root);
    let (master, slave) = open_pty();
    let before = termios_of(&slave);
    assert_ne!(before.c_lflag & libc::ICANON, 0, "a new pty starts cooked");

    let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_suggestive"));
    cmd.args(["tui", "live"])
        .env("SUGGESTIVE_SESSIONS_DIR", root.join("sessions"))
        .env("SUGGESTIVE_CACHE_DIR", root.join("cache"))
        .env("SUGGESTIVE_DATA_DIR", root.join("share"))
        .env("TERM", "xterm-256color")
        .env_remove("COLORTERM")
        .env_remove("TMUX")
        .stdin(io(&slave))
        .stdout(io(&slave))
        .stderr(io(&slave));
    // SAFETY: only async-signal-safe calls between fork and exec. The pty becomes the
    // controlling terminal of a new session, as a terminal emulator sets it up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();

    // Everything the program writes goes into the screen; nothing is ever answered.
    let size = |n: u16| std::num::NonZeroU16::new(n).unwrap();
    let parser = Arc::new(Mutex::new(vt100::Parser::new(size(ROWS), size(COLS), 0)));
    let screen = Screen(parser.clone());
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            parser.lock().unwrap().process(&buf[..n]);
        }
    });
    let mut keys = std::fs::File::from(master.try_clone().unwrap());
    let mut press = |k: &[u8]| keys.write_all(k).unwrap();

    screen.wait_for("the dashboard", |s| {
        s.contains("paused") && s.contains("Work in progress")
    });
    // While the interface runs, the terminal is in raw mode.
    assert_eq!(termios_of(&slave).c_lflag & libc::ICANON, 0);

    // The first key acts: ? opens the key map.
    press(b"?");
    screen.wait_for("the help after the first key", |s| {
        s.contains("run the next round, then pause")
    });
    press(b"x");
    screen.wait_for("the help to close", |s| {
        !s.contains("run the next round, then pause")
    });
    assert_eq!(
        termios_of(&slave).c_lflag & libc::ICANON,
        0,
        "raw mode was lost while the interface ran"
    );

    // q quits, and the terminal is as it was.
    press(b"q");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "q did not end the program; screen:\n{}",
            screen.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let after = termios_of(&slave);
    assert_eq!(
        (after.c_lflag & (libc::ICANON | libc::ECHO)),
        (before.c_lflag & (libc::ICANON | libc::ECHO)),
        "the terminal's line mode and echo are not restored"
    );
    assert!(no_lock_left(&dir), "the session is still locked");
}
