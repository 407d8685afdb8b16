//! Talking to Slurm: `sbatch --parsable` to submit, `squeue` and `sacct` to ask what became of
//! the tasks. Each is looked up on PATH when needed; without them (a machine outside the
//! cluster) the state of a task is unknown and the session's own files say the rest.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

/// Submits `script` (with `args` before it); the job ID `sbatch --parsable` prints.
pub fn sbatch(script: &Path, args: &[String]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => anyhow::anyhow!(
                "sbatch is not on PATH: run `suggestive slurm` on the cluster's login node (or --dry-run to see the scripts)"
            ),
            _ => anyhow::anyhow!("cannot run sbatch: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `JOBID` or `JOBID;CLUSTER`.
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!(
            "sbatch {} printed {:?}, not a job ID",
            script.display(),
            text.trim()
        );
    }
    Ok(id)
}

/// What Slurm says of one array task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, …
    pub state: String,
    /// The node it runs (or ran) on, once it has one.
    pub node: Option<String>,
}

/// What Slurm says of a job's array tasks, by task number. `squeue` knows queued and running
/// tasks, `sacct` the rest; a task in both takes `squeue`'s word. `None` when neither command
/// is there.
pub fn task_states(job: &str) -> Option<BTreeMap<usize, TaskState>> {
    let squeue = query(
        "squeue",
        &["--noheader", "--format=%i|%T|%N", &format!("--jobs={job}")],
    );
    let sacct = query(
        "sacct",
        &[
            "--noheader",
            "--parsable2",
            "--format=JobID,State,NodeList",
            &format!("--jobs={job}"),
        ],
    );
    if squeue.is_none() && sacct.is_none() {
        return None;
    }
    let mut states = parse_states(job, sacct.as_deref().unwrap_or(""));
    states.extend(parse_states(job, squeue.as_deref().unwrap_or("")));
    Some(states)
}

/// The output of a query command, or `None` when it is not on PATH or fails (no accounting
/// storage, a controller that does not answer).
fn query(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lines of `JOBID|STATE|NODES` for `job`'s array tasks: `123_4|RUNNING|node07`,
/// `123_[5-7%2]|PENDING|`, `123_4.batch|COMPLETED|node07` (a step: skipped), `CANCELLED by
/// 1000` (the first word is kept). The node field may be missing, empty or `None assigned`.
pub fn parse_states(job: &str, text: &str) -> BTreeMap<usize, TaskState> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.trim().split('|');
        let (Some(id), Some(state)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some(tasks) = id.strip_prefix(job).and_then(|t| t.strip_prefix('_')) else {
            continue;
        };
        if tasks.contains('.') {
            continue;
        }
        let node = fields
            .next()
            .map(str::trim)
            .filter(|n| !n.is_empty() && *n != "None assigned" && *n != "(null)");
        let task = TaskState {
            state: state.split_whitespace().next().unwrap_or("").to_string(),
            node: node.map(str::to_string),
        };
        for t in expand_tasks(tasks) {
            out.insert(t, task.clone());
        }
    }
    out
}

/// `4` → [4]; `[5-7,9%2]` → [5, 6, 7, 9].
fn expand_tasks(spec: &str) -> Vec<usize> {
    let spec = spec.trim_start_matches('[').trim_end_matches(']');
    let spec = spec.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

/// States in which a task still holds its place: it will run or is running.
pub fn is_live(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "RESIZING"
            | "SUSPENDED"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_and_sacct_lines_are_read_per_task() {
        let squeue = "1002_1|RUNNING|node07\n1002_[3-4%2]|PENDING|\n999_1|RUNNING|node01\n";
        let s = parse_states("1002", squeue);
        assert_eq!(s.len(), 3);
        assert_eq!(s[&1].state, "RUNNING");
        assert_eq!(s[&1].node.as_deref(), Some("node07"));
        assert_eq!(s[&3].state, "PENDING");
        assert_eq!(s[&3].node, None);
        assert_eq!(s[&4].state, "PENDING");
        let sacct = "1002_2|COMPLETED|gpu-3\n1002_2.batch|COMPLETED|gpu-3\n1002_5|CANCELLED by 1000|None assigned\n10021_1|FAILED|x\n";
        let s = parse_states("1002", sacct);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[&2].state, "COMPLETED");
        assert_eq!(s[&2].node.as_deref(), Some("gpu-3"));
        assert_eq!(s[&5].state, "CANCELLED");
        assert_eq!(s[&5].node, None);
        // Two fields (an older format) still read.
        assert_eq!(parse_states("7", "7_1|RUNNING")[&1].node, None);
        assert!(is_live("PENDING") && !is_live("COMPLETED"));
    }
}
