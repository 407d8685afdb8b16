//! `suggestive slurm` and `status` against a fake `sbatch`, `squeue` and `sacct` on PATH: the
//! array range, the resubmission of only what is left, the report job's dependency, the
//! template's placeholders, and what `status` makes of Slurm's answers. (A real one-node Slurm
//! cluster is brought up by tests/slurm/check.sh, outside the default suite.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use suggestive::phantom::PhantomLayout;
use suggestive::session::Session;

/// A tiny session of three repeats, fake Slurm commands, and the environment to run them.
struct Cluster {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    session: PathBuf,
}

/// The fake commands: `sbatch` logs its arguments and the script it was given and prints the
/// next job ID (from 1000); `squeue` and `sacct` print what the test wrote for them.
const SBATCH: &str = r#"#!/bin/sh
n=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 1000)
echo "$n" > "$FAKE_SLURM/job-$n.args"
for a in "$@"; do echo "$a" >> "$FAKE_SLURM/job-$n.args"; done
for a in "$@"; do last="$a"; done
cp "$last" "$FAKE_SLURM/job-$n.sbatch"
echo $((n + 1)) > "$FAKE_SLURM/next"
echo "$n;cluster"
"#;

impl Cluster {
    fn new() -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let data = tiny_phantom(
            &root.join("data"),
            &[("CBICA", 4), ("TCIA", 4)],
            PhantomLayout::Brats2019,
            4,
        );
        let bin_dir = root.join("fake-bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let fake = |name: &str, text: &str| {
            let p = bin_dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        fake("sbatch", SBATCH);
        fake(
            "squeue",
            "#!/bin/sh\ncat \"$FAKE_SLURM/squeue.txt\" 2>/dev/null\n",
        );
        fake(
            "sacct",
            "#!/bin/sh\ncat \"$FAKE_SLURM/sacct.txt\" 2>/dev/null\n",
        );
        std::fs::create_dir_all(root.join("slurm-state")).unwrap();
        let cfg = tiny_session_config(&data, &["experiment.repeats=3", "experiment.rounds=1"]);
        let session = root.join("sessions").join("grid");
        Session::create(&session, cfg).unwrap();
        Cluster {
            _tmp: tmp,
            root,
            session,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bin();
        let path = format!(
            "{}:{}",
            self.root.join("fake-bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.args(args)
            .env("PATH", path)
            .env("FAKE_SLURM", self.root.join("slurm-state"))
            .env("SUGGESTIVE_CACHE_DIR", self.root.join("cache"))
            .env("SUGGESTIVE_CONFIG_DIR", self.root.join("config"))
            .env("SUGGESTIVE_SESSIONS_DIR", self.root.join("sessions"));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(&self, name: &str) -> PathBuf {
        self.root.join("slurm-state").join(name)
    }

    /// What the fake sbatch was given for job `id`: its arguments, and the script.
    fn submitted(&self, id: u32) -> (Vec<String>, String) {
        let args = std::fs::read_to_string(self.state(&format!("job-{id}.args"))).unwrap();
        let script = std::fs::read_to_string(self.state(&format!("job-{id}.sbatch"))).unwrap();
        (args.lines().skip(1).map(String::from).collect(), script)
    }
}

fn sbatch_line<'a>(script: &'a str, key: &str) -> Option<&'a str> {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#SBATCH --{key}=")))
}

#[test]
fn a_dry_run_prints_the_scripts_and_submits_nothing() {
    let c = Cluster::new();
    let out = c.ok(&[
        "slurm",
        "grid",
        "--dry-run",
        "--partition",
        "gpu",
        "--time",
        "02:00:00",
        "--gpus-per-task",
        "2",
        "--max-parallel",
        "2",
        "--sbatch-arg=--qos=high",
    ]);
    assert!(out.contains("#SBATCH --array=1-3%2"), "{out}");
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --time=02:00:00",
        "#SBATCH --gpus-per-task=2",
        "#SBATCH --qos=high",
        "--repeats \"$SLURM_ARRAY_TASK_ID\"",
        "report",
        "dry run: nothing written or submitted",
    ] {
        assert!(out.contains(line), "{line}:\n{out}");
    }
    assert!(!c.state("next").exists(), "sbatch was called");
    assert!(!c.session.join("slurm").exists(), "a dry run wrote files");
}

#[test]
fn slurm_submits_the_array_then_the_report_and_resubmits_only_what_is_left() {
    let c = Cluster::new();
    let out = c.ok(&["slurm", "grid", "--max-parallel", "2", "--account", "lab"]);
    assert!(
        out.contains("submitted repeats 1, 2, 3 as array job 1000, and the report as job 1001"),
        "{out}"
    );
    let (args, run) = c.submitted(1000);
    assert_eq!(args[0], "--parsable");
    assert!(
        args.last().unwrap().ends_with("slurm/run.sbatch"),
        "{args:?}"
    );
    assert_eq!(sbatch_line(&run, "array"), Some("1-3%2"));
    assert_eq!(sbatch_line(&run, "account"), Some("lab"));
    assert!(sbatch_line(&run, "output")
        .unwrap()
        .ends_with("slurm/logs/repeat-%a.out"));
    let (args, report) = c.submitted(1001);
    assert!(
        args.contains(&"--dependency=afterany:1000".to_string()),
        "{args:?}"
    );
    assert!(report.contains(" report "), "{report}");
    // The scripts stay in the session, executable, and the submission is recorded.
    let run_script = c.session.join("slurm/run.sbatch");
    let mode = std::fs::metadata(&run_script).unwrap().permissions().mode();
    assert!(mode & 0o100 != 0, "{mode:o}");
    let jobs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.session.join("slurm/jobs.json")).unwrap()).unwrap();
    assert_eq!(jobs[0]["array_job"], "1000");
    assert_eq!(jobs[0]["report_job"], "1001");
    assert_eq!(jobs[0]["repeats"], serde_json::json!([1, 2, 3]));

    // Repeat 2 finishes (run here, as its task would); task 1 is still running in Slurm and
    // task 3 failed: only repeat 3 is submitted again.
    c.ok(&["run", "grid", "--repeats", "2"]);
    std::fs::write(c.state("squeue.txt"), "1000_1|RUNNING\n").unwrap();
    std::fs::write(
        c.state("sacct.txt"),
        "1000_1|RUNNING\n1000_2|COMPLETED\n1000_2.batch|COMPLETED\n1000_3|FAILED\n",
    )
    .unwrap();
    let out = c.ok(&["slurm", "grid"]);
    assert!(
        out.contains("repeat 1 is still queued or running as 1000_1; not submitted again"),
        "{out}"
    );
    assert!(
        out.contains("submitted repeats 3 as array job 1002"),
        "{out}"
    );
    assert_eq!(sbatch_line(&c.submitted(1002).1, "array"), Some("3"));

    // status: each repeat's job, task, Slurm's state and log.
    std::fs::write(
        c.state("squeue.txt"),
        "1000_1|RUNNING|node07\n1002_[3]|PENDING|\n",
    )
    .unwrap();
    let status = c.ok(&["status", "grid"]);
    let line = |r: usize| {
        status
            .lines()
            .find(|l| l.starts_with(&format!("repeat {r}")))
            .unwrap()
            .to_string()
    };
    assert!(
        line(1).contains("slurm 1000_1 RUNNING on node07"),
        "{status}"
    );
    assert!(
        line(2).contains("(finished)") && line(2).contains("slurm 1000_2 COMPLETED"),
        "{status}"
    );
    assert!(
        line(3).contains("slurm 1002_3 PENDING") && line(3).contains("slurm/logs/repeat-3.out"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&c.ok(&["status", "grid", "--json"])).unwrap();
    assert_eq!(json["repeats"][2]["slurm"]["job"], "1002");
    assert_eq!(json["repeats"][2]["slurm"]["state"], "PENDING");
    assert_eq!(json["repeats"][0]["slurm"]["node"], "node07");

    // Without squeue and sacct (a machine outside the cluster) the files still tell.
    let out = c
        .cmd(&["status", "grid"])
        .env("PATH", c.root.join("no-slurm-here"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("slurm 1002_3 (no squeue or sacct here)"),
        "{text}"
    );
}

#[test]
fn the_template_takes_site_lines_and_unknown_placeholders_are_refused() {
    let c = Cluster::new();
    // The user's template in the config folder is taken by default.
    let config = c.root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("slurm.sbatch"),
        "#!/bin/bash\n{{SBATCH}}\nmodule load cuda/12.4\n# {{JOB}} of {{SESSION}} by {{SUGGESTIVE}}\n{{COMMAND}}\n",
    )
    .unwrap();
    let out = c.ok(&["slurm", "grid", "--dry-run"]);
    assert!(out.contains("\nmodule load cuda/12.4\n"), "{out}");
    assert!(
        out.contains("# run of '") && out.contains("# report of '"),
        "{out}"
    );
    let bad = c.root.join("bad.sbatch");
    std::fs::write(&bad, "{{SBATCH}}\n{{COMMAND}}\n{{MODULES}}\n").unwrap();
    let out = c
        .cmd(&["slurm", "grid", "--template", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.sbatch") && err.contains("unknown placeholder {{MODULES}}"),
        "{err}"
    );
    assert!(!c.state("next").exists(), "a bad template was submitted");
}

#[test]
fn a_finished_session_has_nothing_to_submit() {
    let c = Cluster::new();
    c.ok(&["run", "grid"]);
    let out = c.ok(&["slurm", "grid"]);
    assert!(
        out.contains("nothing to submit: every repeat is finished"),
        "{out}"
    );
    assert!(!c.state("next").exists());
}

/// The array task's command part, with the binary replaced by `program`.
fn task_command(c: &Cluster, program: &str) -> String {
    let text = std::fs::read_to_string(c.session.join("slurm/run.sbatch")).unwrap();
    let command: String = text
        .lines()
        .skip_while(|l| !l.starts_with("devices=()"))
        .collect::<Vec<_>>()
        .join("\n");
    let exe = bin().get_program().to_string_lossy().into_owned();
    assert!(command.contains(&format!("'{exe}' run ")), "{command}");
    command.replace(&format!("'{exe}'"), program)
}

/// The generated array task picks its devices from what Slurm made visible.
#[test]
fn the_task_runs_its_repeat_on_the_gpus_it_was_given() {
    let c = Cluster::new();
    c.ok(&["slurm", "grid"]);
    let run_script = std::fs::read_to_string(c.session.join("slurm/run.sbatch")).unwrap();
    assert!(run_script
        .contains("#SBATCH --open-mode=append\n#SBATCH --requeue\n#SBATCH --signal=B:USR1@120\n"));
    let command = task_command(&c, "echo");
    let run = |gpus: Option<&str>| {
        let mut sh = Command::new("bash");
        sh.arg("-c")
            .arg(&command)
            .env("SLURM_ARRAY_TASK_ID", "2")
            .env_remove("CUDA_VISIBLE_DEVICES");
        if let Some(g) = gpus {
            sh.env("CUDA_VISIBLE_DEVICES", g);
        }
        let out = sh.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let session = c.session.display().to_string();
    assert_eq!(run(None), format!("run {session} --repeats 2"));
    assert_eq!(
        run(Some("3")),
        format!("run {session} --repeats 2 --device cuda:0")
    );
    assert_eq!(
        run(Some("4,5,7")),
        format!("run {session} --repeats 2 --devices cuda:0,cuda:1,cuda:2")
    );
}

/// Slurm's warning before the time limit (USR1 to the batch shell) is passed on to the run,
/// and the task requeues itself once the run has stopped; a SIGTERM (scancel) is passed on
/// and not requeued.
#[test]
fn the_time_limit_warning_stops_the_run_and_requeues_the_task() {
    let c = Cluster::new();
    c.ok(&["slurm", "grid"]);
    // A stand-in for the run: stops with status 130 on USR1 or TERM, as suggestive does.
    let fake = c.root.join("fake-run");
    std::fs::write(
        &fake,
        "#!/bin/bash\ntrap 'echo \"stopped by $1\" >> \"$FAKE_SLURM/run.log\"; exit 130' USR1 TERM\necho started >> \"$FAKE_SLURM/run.log\"\nwhile :; do sleep 0.05; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let scontrol = c.root.join("fake-bin/scontrol");
    std::fs::write(
        &scontrol,
        "#!/bin/sh\necho \"$@\" >> \"$FAKE_SLURM/scontrol.log\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).unwrap();
    let command = task_command(&c, &format!("'{}'", fake.display()));
    for (signal, requeued) in [(libc::SIGUSR1, true), (libc::SIGTERM, false)] {
        let _ = std::fs::remove_file(c.state("run.log"));
        let _ = std::fs::remove_file(c.state("scontrol.log"));
        let path = format!(
            "{}:{}",
            c.root.join("fake-bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut sh = Command::new("bash")
            .arg("-c")
            .arg(&command)
            .env("PATH", path)
            .env("FAKE_SLURM", c.state(""))
            .env("SLURM_ARRAY_TASK_ID", "2")
            .env("SLURM_JOB_ID", "1077")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(c.state("run.log")).is_ok_and(|l| l.contains("started")) {
            assert!(started.elapsed().as_secs() < 10, "the run never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        unsafe { libc::kill(sh.id() as i32, signal) };
        let status = sh.wait().unwrap();
        assert_eq!(status.code(), Some(130), "signal {signal}");
        let log = std::fs::read_to_string(c.state("run.log")).unwrap();
        assert!(log.contains("stopped by run"), "{log}");
        let scontrol = std::fs::read_to_string(c.state("scontrol.log")).unwrap_or_default();
        if requeued {
            assert_eq!(scontrol.trim(), "requeue 1077");
        } else {
            assert!(scontrol.is_empty(), "{scontrol}");
        }
    }
}

/// A value that would end an `#SBATCH` line (and start a shell command) is refused by name
/// before anything is written or submitted; a session name with a space becomes one quoted
/// word of the job name, and the log path's `%` is refused.
#[test]
fn slurm_values_are_quoted_or_refused_and_never_become_commands() {
    let c = Cluster::new();
    for (flag, value) in [
        ("--partition", "gpu\ntouch MARK"),
        ("--account", "lab\rtouch MARK"),
        ("--time", "1:00:00\u{1b}]0;x"),
        ("--sbatch-arg", "--qos=high\ntouch MARK"),
        ("--partition", "gpu\"x"),
    ] {
        let out = c
            .cmd(&["slurm", "grid", flag, value])
            .current_dir(&c.root)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value:?}: {err}");
        assert!(err.contains("#SBATCH"), "{err}");
        assert!(!err.contains('\u{1b}') && !err.contains('\r'), "{err:?}");
        assert!(!c.state("job-1000.args").exists(), "submitted");
        assert!(
            !c.session.join("slurm").join("run.sbatch").exists(),
            "written"
        );
    }
    assert!(!c.root.join("MARK").exists());

    let spaced = c.root.join("sessions").join("my grid");
    std::fs::rename(&c.session, &spaced).unwrap();
    let out = c.ok(&["slurm", "my grid", "--dry-run"]);
    assert!(
        out.contains("#SBATCH \"--job-name=suggestive-my grid\""),
        "{out}"
    );
    assert!(out.contains("#SBATCH \"--output="), "{out}");

    let percent = c.root.join("sessions").join("grid%j");
    std::fs::rename(&spaced, &percent).unwrap();
    let out = c.cmd(&["slurm", "grid%j", "--dry-run"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("grid%j") && err.contains("reads a % in a log path"),
        "{err}"
    );
}
