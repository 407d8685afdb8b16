//! A session's repeats as a Slurm array job: one task per unfinished repeat, and a report job
//! that runs after them. The scripts come from a template (`script.rs`); they are submitted
//! and followed through Slurm's own commands (`scheduler.rs`); each submission is recorded in
//! the session's `slurm/jobs.json`. Slurm schedules; nothing here does.

pub mod scheduler;
pub mod script;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::session::files::write_atomic;
use crate::session::Session;
use crate::untrusted::{sbatch_word, shell_quote};

/// What the jobs ask Slurm for (each `None`: the cluster's default).
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// `HH:MM:SS` (or any form Slurm takes).
    pub time: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// `16G`, `64000M`, …
    pub mem: Option<String>,
    /// At most this many repeats at once (`--array=…%K`).
    pub max_parallel: Option<usize>,
    /// More `#SBATCH` arguments, as given (`--qos=high`).
    pub sbatch_args: Vec<String>,
    pub template: Option<PathBuf>,
}

/// One submission: the array job, its report job, and the repeats it runs (1-based).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub array_job: String,
    pub report_job: String,
    pub repeats: Vec<usize>,
    /// Seconds since the Unix epoch.
    pub submitted: f64,
}

/// The scripts of one submission, before they go to Slurm.
pub struct Scripts {
    /// The repeats the array runs (1-based).
    pub repeats: Vec<usize>,
    pub run: String,
    pub report: String,
}

/// Every submission recorded in `session`, oldest first (none: an empty list).
pub fn submissions(session: &Session) -> Result<Vec<Submission>> {
    let path = session.files().slurm_jobs();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a list of Slurm submissions", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Where a repeat (1-based) stands in Slurm: the job and task that run it, what Slurm says
/// of it, and its log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepeatJob {
    pub job: String,
    pub task: usize,
    /// Slurm's word for the task (`PENDING`, `RUNNING`, `COMPLETED`, …); `None` when Slurm
    /// was not asked (no squeue or sacct here) or no longer knows it (`asked`).
    pub state: Option<String>,
    pub asked: bool,
    /// The node Slurm put the task on, once it has one.
    pub node: Option<String>,
    pub log: PathBuf,
}

impl RepeatJob {
    /// Slurm's state as `status` shows it.
    pub fn state_text(&self) -> &str {
        match (&self.state, self.asked) {
            (Some(s), _) => s,
            (None, true) => "(no longer in squeue or sacct)",
            (None, false) => "(no squeue or sacct here)",
        }
    }

    /// Queued or running, as far as Slurm says.
    pub fn is_live(&self) -> bool {
        self.state.as_deref().is_some_and(scheduler::is_live)
    }

    /// `slurm 1000_2 RUNNING on node07`.
    pub fn describe(&self) -> String {
        let node = match (&self.node, self.is_live()) {
            (Some(n), true) => format!(" on {n}"),
            _ => String::new(),
        };
        format!(
            "slurm {}_{} {}{node}",
            self.job,
            self.task,
            self.state_text()
        )
    }
}

/// Where a repeat (0-based `repeat`) runs, as far as this machine can tell: the process that
/// holds its lock (with the host it named) and its Slurm task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub repeat: usize,
    pub finished: bool,
    /// The pid of a live process holding the repeat's lock.
    pub pid: Option<u32>,
    /// The host that process named in the lock file.
    pub host: Option<String>,
    pub slurm: Option<RepeatJob>,
}

impl Placement {
    /// A process holds the repeat, or Slurm has its task queued or running.
    pub fn is_live(&self) -> bool {
        !self.finished && (self.pid.is_some() || self.slurm.as_ref().is_some_and(|j| j.is_live()))
    }

    /// `pid 4242 on node07 · slurm 1000_2 RUNNING on node07`, or what is known of it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(pid) = self.pid {
            parts.push(match &self.host {
                Some(h) => format!("pid {pid} on {h}"),
                None => format!("pid {pid}"),
            });
        }
        if let Some(j) = &self.slurm {
            parts.push(j.describe());
        }
        if parts.is_empty() {
            let word = if self.finished {
                "finished"
            } else {
                "nothing runs it now"
            };
            parts.push(word.to_string());
        }
        parts.join(" · ")
    }
}

/// Where each repeat of `session` runs (asks Slurm when the session was submitted to it).
pub fn placements(session: &Session) -> Result<Vec<Placement>> {
    let files = session.files();
    let per = session.steps_per_repeat();
    Ok(repeat_jobs(session)?
        .into_iter()
        .enumerate()
        .map(|(r, slurm)| {
            let pid = files.repeat_holder(r);
            Placement {
                repeat: r,
                finished: session.state.progress_of(r).done >= per,
                host: pid.and_then(|_| files.repeat_holder_host(r)),
                pid,
                slurm,
            }
        })
        .collect())
}

/// Per repeat (index 0-based), its latest submission's task, if any.
pub fn repeat_jobs(session: &Session) -> Result<Vec<Option<RepeatJob>>> {
    let subs = submissions(session)?;
    let files = session.files();
    let mut states: std::collections::BTreeMap<String, Option<_>> = Default::default();
    let mut out = Vec::new();
    for r in 1..=session.config.experiment.repeats {
        let Some(sub) = subs.iter().rev().find(|s| s.repeats.contains(&r)) else {
            out.push(None);
            continue;
        };
        let tasks = states
            .entry(sub.array_job.clone())
            .or_insert_with(|| scheduler::task_states(&sub.array_job));
        let task = tasks.as_ref().and_then(|t| t.get(&r));
        out.push(Some(RepeatJob {
            job: sub.array_job.clone(),
            task: r,
            state: task.map(|t| t.state.clone()),
            asked: tasks.is_some(),
            node: task.and_then(|t| t.node.clone()),
            log: files.slurm_log(Some(r)),
        }));
    }
    Ok(out)
}

/// What a new submission would run: the repeats (1-based) not finished and not still queued
/// or running in a recorded job, and those that are, with their `JOB_TASK`.
pub struct ToSubmit {
    pub repeats: Vec<usize>,
    pub live: Vec<(usize, String)>,
}

pub fn repeats_to_submit(session: &Session) -> Result<ToSubmit> {
    let per = session.steps_per_repeat();
    let mut out = ToSubmit {
        repeats: Vec::new(),
        live: Vec::new(),
    };
    for (r, job) in repeat_jobs(session)?.iter().enumerate() {
        if session.state.progress_of(r).done >= per {
            continue;
        }
        match job {
            Some(j) if j.is_live() => {
                out.live.push((r + 1, format!("{}_{}", j.job, j.task)));
            }
            _ => out.repeats.push(r + 1),
        }
    }
    Ok(out)
}

/// The scripts that run `repeats` (1-based) of `session` with `opts`, and then its report.
pub fn scripts(session: &Session, repeats: &[usize], opts: &JobOptions) -> Result<Scripts> {
    let (template, origin) = script::load_template(opts.template.as_deref())?;
    let binary = std::env::current_exe().context("cannot tell where this binary is")?;
    let dir = absolute(&session.dir)?;
    let files = crate::session::files::SessionFiles::new(&dir);
    let name = session.name();
    let mut array = script::array_ranges(repeats);
    if let Some(k) = opts.max_parallel {
        let _ = write!(array, "%{k}");
    }
    let log = files.slurm_log(None);
    let repeat_log = log.with_file_name("repeat-%a.out");
    // Slurm reads `%` in --output as a pattern (ours is %a, the task).
    if dir.display().to_string().contains('%') {
        bail!(
            "{}: Slurm reads a % in a log path as a pattern; move the session to a folder without one",
            crate::untrusted::escaped(&dir.display().to_string())
        );
    }
    let mut run_lines = vec![
        format!("--job-name=suggestive-{name}"),
        format!("--array={array}"),
        format!("--output={}", repeat_log.display()),
        // A requeued task adds to its log instead of starting it again.
        "--open-mode=append".to_string(),
        "--requeue".to_string(),
        format!("--signal=B:USR1@{}", script::WARN_SECONDS),
    ];
    run_lines.extend(resources(opts));
    let mut report_lines = vec![
        format!("--job-name=suggestive-{name}-report"),
        format!("--output={}", log.display()),
    ];
    if let Some(a) = &opts.account {
        report_lines.push(format!("--account={a}"));
    }
    if let Some(p) = &opts.partition {
        report_lines.push(format!("--partition={p}"));
    }
    let fill = |job: &str, lines: &[String], command: String| -> Result<String> {
        // Every argument is one word of sbatch's own parser, or refused (a newline would end
        // the comment and start a shell command).
        let sbatch = lines
            .iter()
            .map(|l| {
                Ok(format!(
                    "#SBATCH {}",
                    sbatch_word("an #SBATCH argument", l)?
                ))
            })
            .collect::<Result<Vec<String>, String>>()
            .map_err(anyhow::Error::msg)?;
        script::fill(
            &template,
            &origin,
            &[
                ("SBATCH", sbatch.join("\n")),
                ("COMMAND", command),
                ("SESSION", shell_quote(&dir.display().to_string())),
                ("SUGGESTIVE", shell_quote(&binary.display().to_string())),
                ("JOB", job.to_string()),
            ],
        )
    };
    Ok(Scripts {
        repeats: repeats.to_vec(),
        run: fill("run", &run_lines, script::run_command(&binary, &dir))?,
        report: fill(
            "report",
            &report_lines,
            script::report_command(&binary, &dir),
        )?,
    })
}

/// The `#SBATCH` arguments for the resources of `opts`, then its extra arguments.
fn resources(opts: &JobOptions) -> Vec<String> {
    let mut v = Vec::new();
    let mut add = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            v.push(format!("--{key}={value}"));
        }
    };
    add("partition", opts.partition.clone());
    add("account", opts.account.clone());
    add("time", opts.time.clone());
    add("gpus-per-task", opts.gpus_per_task.map(|n| n.to_string()));
    add("cpus-per-task", opts.cpus_per_task.map(|n| n.to_string()));
    add("mem", opts.mem.clone());
    v.extend(opts.sbatch_args.iter().cloned());
    v
}

/// Writes the scripts into the session's `slurm/` folder, submits the array job and then the
/// report job after it (`afterany`: the report is written whatever became of each task), and
/// records the submission.
pub fn submit(session: &Session, scripts: &Scripts) -> Result<Submission> {
    let files = session.files();
    let logs = files.slurm_log(None);
    let logs = logs.parent().expect("logs folder");
    std::fs::create_dir_all(logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let run = files.slurm_script("run");
    let report = files.slurm_script("report");
    write_script(&run, &scripts.run)?;
    write_script(&report, &scripts.report)?;
    let array_job = scheduler::sbatch(&run, &[])?;
    let report_job = scheduler::sbatch(&report, &[format!("--dependency=afterany:{array_job}")])
        .with_context(|| format!("array job {array_job} was submitted; its report job was not"))?;
    let sub = Submission {
        array_job,
        report_job,
        repeats: scripts.repeats.clone(),
        submitted: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    };
    let mut all = submissions(session)?;
    all.push(sub.clone());
    write_atomic(&files.slurm_jobs(), &serde_json::to_vec_pretty(&all)?)?;
    Ok(sub)
}

/// A job script, readable and executable by its owner (Slurm copies it at submission).
fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    write_atomic(path, text.as_bytes())?;
    let mut p = std::fs::metadata(path)?.permissions();
    p.set_mode(p.mode() | 0o700);
    std::fs::set_permissions(path, p)
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// `path` made absolute against the current folder (a job runs elsewhere).
fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

/// Refuses options Slurm would refuse later, naming them.
pub fn check(opts: &JobOptions) -> Result<()> {
    if opts.max_parallel == Some(0) {
        bail!("--max-parallel 0: at least one repeat must be able to run");
    }
    if opts.gpus_per_task == Some(0) {
        bail!("--gpus-per-task 0: leave it out for CPU tasks");
    }
    // Before anything else, so that a value no #SBATCH line can take is refused whether or
    // not there is something to submit.
    let words = [
        ("--partition", &opts.partition),
        ("--account", &opts.account),
        ("--time", &opts.time),
        ("--mem", &opts.mem),
    ];
    let given = words
        .into_iter()
        .filter_map(|(flag, v)| Some((flag, v.as_deref()?)))
        .chain(
            opts.sbatch_args
                .iter()
                .map(|v| ("--sbatch-arg", v.as_str())),
        );
    for (flag, value) in given {
        sbatch_word(&format!("{flag}, an #SBATCH argument,"), value).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
