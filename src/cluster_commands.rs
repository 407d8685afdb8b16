//! The `slurm` command: a session's unfinished repeats submitted as a Slurm array job, with a
//! report job after them (the work is in `suggestive::cluster`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use suggestive::cluster::{self, JobOptions};
use suggestive::session::Session;

use crate::session_commands::SessionsDir;

#[derive(Args)]
pub struct SlurmArgs {
    pub session: String,
    #[arg(long)]
    pub partition: Option<String>,
    #[arg(long)]
    pub account: Option<String>,
    /// Each task's time limit, HH:MM:SS.
    #[arg(long, value_name = "HH:MM:SS")]
    pub time: Option<String>,
    #[arg(long, value_name = "N")]
    pub gpus_per_task: Option<u32>,
    #[arg(long, value_name = "N")]
    pub cpus_per_task: Option<u32>,
    /// Memory per node, as Slurm takes it (16G, 64000M).
    #[arg(long, value_name = "M")]
    pub mem: Option<String>,
    /// At most K repeats at once.
    #[arg(long, value_name = "K")]
    pub max_parallel: Option<usize>,
    /// Another #SBATCH argument (repeatable): --sbatch-arg=--qos=high.
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// The job script template [default: ~/.config/suggestive/slurm.sbatch if it exists, else
    /// the built-in one].
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// Print the scripts; write and submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

pub fn cmd_slurm(a: SlurmArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let session = Session::open(&dir)?;
    let opts = JobOptions {
        partition: a.partition,
        account: a.account,
        time: a.time,
        gpus_per_task: a.gpus_per_task,
        cpus_per_task: a.cpus_per_task,
        mem: a.mem,
        max_parallel: a.max_parallel,
        sbatch_args: a.sbatch_args,
        template: a.template,
    };
    cluster::check(&opts)?;
    let cluster::ToSubmit { repeats, live } = cluster::repeats_to_submit(&session)?;
    for (r, task) in &live {
        println!("repeat {r} is still queued or running as {task}; not submitted again");
    }
    if repeats.is_empty() {
        println!(
            "nothing to submit: {}",
            if live.is_empty() {
                "every repeat is finished"
            } else {
                "the unfinished repeats are in Slurm already"
            }
        );
        return Ok(());
    }
    let scripts = cluster::scripts(&session, &repeats, &opts)?;
    if a.dry_run {
        let files = session.files();
        println!("# {}\n{}", files.slurm_script("run").display(), scripts.run);
        println!(
            "# {} (submitted with --dependency=afterany:<the array job>)\n{}",
            files.slurm_script("report").display(),
            scripts.report
        );
        println!("dry run: nothing written or submitted");
        return Ok(());
    }
    let sub = cluster::submit(&session, &scripts)?;
    let list: Vec<String> = sub.repeats.iter().map(|r| r.to_string()).collect();
    println!(
        "submitted repeats {} as array job {}, and the report as job {} after it",
        list.join(", "),
        sub.array_job,
        sub.report_job
    );
    println!(
        "follow it with: suggestive status {}   (logs in {})",
        a.session,
        session.files().slurm_dir().join("logs").display()
    );
    Ok(())
}
