//! `import`: segmentations from annotators, offered to a session labelled by people.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::session_commands::SessionsDir;
use suggestive::paths;
use suggestive::session::annotations::{self, Verdict};
use suggestive::session::config::Labels;
use suggestive::session::files::write_atomic;
use suggestive::session::Session;

#[derive(Args)]
pub struct ImportArgs {
    /// Session name or path.
    pub session: String,
    /// Segmentations, each named after its case (CASE_seg.nii.gz, CASE.nii.gz, or the data
    /// set's own naming).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Replace a case's segmentation counted earlier in this round.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub dirs: SessionsDir,
}

pub fn cmd_import(a: ImportArgs) -> Result<()> {
    let dir = a.dirs.resolve(&a.session);
    let session = Session::open(&dir)?;
    if session.config.experiment.labels != Labels::Human {
        bail!(
            "session {} is not labelled by people (experiment.labels = \"simulated\"): its rounds take the data set's own segmentations",
            session.name()
        );
    }
    let files = session.files();
    let Some(round) = annotations::latest_round(&files) else {
        bail!(
            "session {} asks for no annotations yet: `suggestive run {}` writes the first work package",
            session.name(),
            session.name()
        );
    };
    for f in &a.files {
        // Anything else there (a folder, a named pipe) is refused by the read, by its type.
        if !f.exists() {
            bail!("{}: no such file; nothing was imported", f.display());
        }
    }
    let repeat = 0;
    let lock = match files.lock_repeat(repeat) {
        Ok(lock) => lock,
        Err(_) if files.repeat_holder(repeat).is_some() => {
            // A run holds the session (one that waits for this round, with --wait): the files
            // go into the inbox, and it checks and counts them itself.
            let holder = files.repeat_holder(repeat).unwrap_or(0);
            if a.replace {
                bail!(
                    "a run holds session {} (pid {holder}); it takes the inbox's files, but not as replacements: stop it, then import --replace",
                    session.name(),
                );
            }
            // Only a run that waits for this round takes its inbox: once the round is
            // complete, the run is training for the next one, and a file left now would never
            // be counted.
            let items = annotations::worklist(&files, round)?.unwrap_or_default();
            if annotations::missing(&session, repeat, round, &items).is_empty() {
                bail!(
                    "round {round} of session {} has all its annotations, and a run (pid {holder}) is training for the next round: its work package comes when the run gets there; nothing was imported",
                    session.name()
                );
            }
            let inbox = files.inbox(round);
            for f in &a.files {
                let name = f.file_name().unwrap_or_default();
                let Some(item) = annotations::item_for(&items, f) else {
                    bail!(
                        "{}: not a case of round {round}'s worklist (name a file CASE_seg.nii.gz); nothing was imported",
                        f.display()
                    );
                };
                let bytes = suggestive::data::read_file_bytes(&item.case, f, Default::default())?;
                write_atomic(&inbox.join(name), &bytes)?;
                println!(
                    "{}: a run holds the session; copied into {} for it to take",
                    f.display(),
                    inbox.display()
                );
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    // Read again under the lock: a run that held it until now may have counted files since.
    let mut session = Session::open(&dir)?;
    let ds = session.load_cases(None, &paths::dataset_cache_root())?;
    let mut refused = 0;
    for f in &a.files {
        match annotations::import(&mut session, &ds, repeat, round, f, a.replace)? {
            Verdict::Counted { case, warnings } => {
                println!("{}: counted for {case} (round {round})", f.display());
                for w in warnings {
                    eprintln!("warning: {w}");
                }
            }
            Verdict::AlreadyCounted { case } => {
                println!(
                    "{}: already counted for {case} (round {round})",
                    f.display()
                )
            }
            Verdict::Refused(why) => {
                eprintln!("refused: {why}");
                refused += 1;
            }
        }
    }
    drop(lock);
    let items = annotations::worklist(&files, round)?.unwrap_or_default();
    let missing = annotations::missing(&session, repeat, round, &items);
    if missing.is_empty() {
        println!(
            "round {round}: all {} annotations are in; `suggestive run {}` goes on",
            items.len(),
            session.name()
        );
    } else {
        let names: Vec<&str> = missing.iter().map(|i| i.case.as_str()).collect();
        println!(
            "round {round}: {} of {} annotations in; still to come: {}",
            items.len() - missing.len(),
            items.len(),
            names.join(", ")
        );
    }
    if refused > 0 {
        bail!(
            "{refused} of {} files refused (a refusal changes nothing; the others are counted)",
            a.files.len()
        );
    }
    Ok(())
}
