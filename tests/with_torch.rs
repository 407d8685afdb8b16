//! `with-torch` on a fresh machine: an empty cache folder and stub `python3` programs stand in
//! for the machine, so every branch of the set-up runs without downloading torch.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The python3 found on PATH. `torch`: the version its `import torch` reports (none: no
/// torch); `venv_works`: whether `-m venv` makes a venv, whose python's pip install `pip_works`.
struct Machine {
    torch: Option<&'static str>,
    venv_works: bool,
    pip_works: bool,
}

fn write_script(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The venv's python: pip installs torch by leaving a marker, which `import torch` then finds.
fn venv_python(pip_works: bool) -> String {
    format!(
        r#"#!/bin/bash
here=$(cd "$(dirname "$0")/.." && pwd)
case "$*" in
  "-c "*) [ -f "$here/torch-installed" ] && echo 2.11.0 && exit 0; exit 1 ;;
  "-m pip --version") echo "pip 24.0"; exit 0 ;;
  "-m pip install"*)
    echo "Downloading torch-2.11.0.whl (stub)"
    {} ;;
esac
exit 1
"#,
        if pip_works {
            r#"touch "$here/torch-installed"; exit 0"#
        } else {
            r#"echo "ERROR: No matching distribution found for torch==2.11.0" >&2; exit 1"#
        }
    )
}

/// A fresh machine: the stub python3 on PATH and an empty cache folder.
struct Fresh {
    tmp: tempfile::TempDir,
}

impl Fresh {
    fn new(machine: &Machine) -> Fresh {
        let tmp = tempfile::tempdir().unwrap();
        let torch = match machine.torch {
            Some(v) => format!("echo {v}; exit 0"),
            None => "echo \"ModuleNotFoundError: No module named 'torch'\" >&2; exit 1".into(),
        };
        let venv = if machine.venv_works {
            format!(
                r#"dir="${{@: -1}}"; mkdir -p "$dir/bin" && cp "{}" "$dir/bin/python" && exit 0"#,
                tmp.path().join("venv-python").display()
            )
        } else {
            r#"echo "/usr/bin/python3: No module named venv" >&2; exit 1"#.into()
        };
        write_script(
            &tmp.path().join("venv-python"),
            &venv_python(machine.pip_works),
        );
        write_script(
            &tmp.path().join("bin/python3"),
            &format!(
                "#!/bin/bash\ncase \"$1 $2\" in\n  \"-c \"*) {torch} ;;\n  \"-m venv\") {venv} ;;\nesac\nexit 1\n"
            ),
        );
        Fresh { tmp }
    }

    /// Runs `with-torch COMMAND` here.
    fn run(&self, command: &[&str]) -> Output {
        std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("with-torch"))
            .args(command)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.tmp.path().join("bin").display()),
            )
            .env("XDG_CACHE_HOME", self.tmp.path().join("cache"))
            .env_remove("LIBTORCH")
            .env_remove("LIBTORCH_USE_PYTORCH")
            .env_remove("VIRTUAL_ENV")
            .output()
            .unwrap()
    }

    /// Where with-torch keeps its private venv.
    fn venv(&self) -> PathBuf {
        self.tmp.path().join("cache/suggestive/torch-2.11.0")
    }
}

/// Runs `with-torch COMMAND` on a fresh `machine`: the output and the venv's path.
fn run(machine: &Machine, command: &[&str]) -> (Output, PathBuf, Fresh) {
    let fresh = Fresh::new(machine);
    (fresh.run(command), fresh.venv(), fresh)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const SHOW_ENV: [&str; 3] = [
    "sh",
    "-c",
    "echo ran LIBTORCH_USE_PYTORCH=$LIBTORCH_USE_PYTORCH SUGGESTIVE_PYTHON=$SUGGESTIVE_PYTHON",
];

#[test]
fn without_the_venv_module_it_says_so() {
    let machine = Machine {
        torch: None,
        venv_works: false,
        pip_works: true,
    };
    let (out, _, _tmp) = run(&machine, &SHOW_ENV);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("venv"), "the error names venv: {err}");
    assert!(err.contains("python3-venv"), "and how to get it: {err}");
    assert!(!text(&out.stdout).contains("ran"));
}

#[test]
fn a_failed_pip_install_says_so() {
    let machine = Machine {
        torch: None,
        venv_works: true,
        pip_works: false,
    };
    let (out, _, _tmp) = run(&machine, &SHOW_ENV);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pip install torch==2.11.0 failed"),
        "the error says pip failed: {err}"
    );
    // pip's own message is shown, not hidden.
    assert!(err.contains("No matching distribution"), "{err}");
    assert!(!text(&out.stdout).contains("ran"));
}

#[test]
fn a_fresh_machine_installs_torch_then_runs_the_command() {
    let machine = Machine {
        torch: None,
        venv_works: true,
        pip_works: true,
    };
    let (out, venv, _tmp) = run(&machine, &SHOW_ENV);
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{err}");
    // It says what is coming before it starts, and shows pip's progress.
    let warn = err.find("4.6 GB").expect("the download size is announced");
    let pip = err
        .find("Downloading torch")
        .expect("pip's progress is shown");
    assert!(warn < pip, "{err}");
    assert!(stdout.contains("ran LIBTORCH_USE_PYTORCH=1"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "SUGGESTIVE_PYTHON={}",
            venv.join("bin/python").display()
        )),
        "{stdout}"
    );
    // A second run finds the venv and installs nothing.
    assert!(venv.join("torch-installed").exists());
}

#[test]
fn a_python_with_another_torch_is_left_alone() {
    let machine = Machine {
        torch: Some("2.5.1"),
        venv_works: true,
        pip_works: true,
    };
    let (out, venv, _tmp) = run(&machine, &SHOW_ENV);
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("has torch 2.5.1") && err.contains("private venv"),
        "{err}"
    );
    assert!(
        stdout.contains(&format!(
            "SUGGESTIVE_PYTHON={}",
            venv.join("bin/python").display()
        )),
        "the private venv is used: {stdout}"
    );
    assert!(stdout.contains("LIBTORCH_USE_PYTORCH=1"), "{stdout}");
}

#[test]
fn a_second_run_reuses_the_venv_quietly() {
    let machine = Machine {
        torch: None,
        venv_works: true,
        pip_works: true,
    };
    let (first, venv, fresh) = run(&machine, &SHOW_ENV);
    assert!(first.status.success());
    // The same cache folder again: no install message this time.
    let out = fresh.run(&SHOW_ENV);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("installing"), "{err}");
    assert!(venv.join("bin/python").exists());
}

#[test]
fn a_venv_left_without_pip_is_made_again() {
    // What a `python3 -m venv` run before python3-venv was installed leaves behind.
    let machine = Machine {
        torch: None,
        venv_works: true,
        pip_works: true,
    };
    let fresh = Fresh::new(&machine);
    write_script(&fresh.venv().join("bin/python"), "#!/bin/bash\nexit 1\n");
    let out = fresh.run(&SHOW_ENV);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("has no pip: creating it again"), "{err}");
    assert!(text(&out.stdout).contains("LIBTORCH_USE_PYTORCH=1"));
}
