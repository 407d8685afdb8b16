//! The `suggestive` command line. Each subcommand is a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod annotate_commands;
mod cluster_commands;
mod data_commands;
mod session_commands;

use annotate_commands::*;
use cluster_commands::*;
use data_commands::*;
use session_commands::*;

#[derive(Parser)]
#[command(
    name = "suggestive",
    version,
    about = "Gradient-guided suggestive annotation for brain-tumour MRI segmentation",
    long_about = "Gradient-guided suggestive annotation for brain-tumour MRI segmentation.\n\n\
        Reads BraTS-layout NIfTI folders, generates a synthetic BraTS-like phantom (the embedded \
        default data), and previews slices in the terminal."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a BraTS folder (through the preprocessed cache) and print a summary.
    Dataset(DatasetArgs),
    /// Write a synthetic BraTS-layout data set (four modalities, segmentation, name_mapping.csv).
    Phantom(PhantomArgs),
    /// Print one slice of a volume inline in the terminal, with the tumour outline.
    Preview(PreviewArgs),
    /// Show the libtorch this binary runs on (CUDA, cuDNN, threads) and where data is kept.
    Info {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a session from a preset (demo, brats-patient, brats-image, brats-transfer-patient,
    /// brats-transfer-image, annotate, or a path to a session.toml).
    New(NewArgs),
    /// Run or resume a session headless; Ctrl-C stops at the next safe point.
    Run(RunArgs),
    /// Where a session stands, per arm and round.
    Status(StatusArgs),
    /// Results as CSV and JSON, and a plot of test Dice against the annotation budget.
    Report(ReportArgs),
    /// The suggested samples (patient, slice, context slices, distance, angle) as CSV or JSON.
    Export(ExportArgs),
    /// The interactive interface: a session browser, or SESSION's live dashboard.
    Tui(TuiArgs),
    /// Submit a session's unfinished repeats to Slurm as an array job, and its report after
    /// them.
    Slurm(SlurmArgs),
    /// Offer annotators' segmentations to a session labelled by people (checked, then counted).
    Import(ImportArgs),
    /// The demo on the embedded default data: generates the phantom if missing, creates (or
    /// reopens) the `demo` session and opens it in the TUI (`--headless`: runs it and writes its
    /// report).
    Demo {
        /// Run and report without the interactive interface.
        #[arg(long)]
        headless: bool,
        #[command(flatten)]
        ui: UiArgs,
        #[command(flatten)]
        dirs: SessionsDir,
    },
}

fn main() -> ExitCode {
    // Before any thread allocates: libtorch's CPU tensors reuse freed heap blocks instead of
    // faulting fresh pages in at every step (engine::host_memory).
    suggestive::engine::host_memory::keep_freed_blocks();
    let cli = Cli::parse();
    // Output into a closed pipe (`suggestive status S | head -3`) ends a reporting command
    // quietly, as it does other command-line tools, instead of a panic in println!. Not a
    // run, the TUI or the demo: `run --jsonl | head` must not end the training (their writes
    // to a closed pipe fail and are ignored).
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Tui(_) | Command::Demo { .. }
    ) {
        // SAFETY: called before any thread starts; restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Dataset(a) => cmd_dataset(a),
        Command::Phantom(a) => cmd_phantom(a),
        Command::Preview(a) => cmd_preview(a),
        Command::Info { json } => cmd_info(json),
        Command::New(a) => cmd_new(a),
        Command::Run(a) => cmd_run(a),
        Command::Status(a) => cmd_status(a),
        Command::Report(a) => cmd_report(a),
        Command::Export(a) => cmd_export(a),
        Command::Tui(a) => cmd_tui(a),
        Command::Slurm(a) => cmd_slurm(a),
        Command::Import(a) => cmd_import(a),
        Command::Demo { headless, ui, dirs } => cmd_demo(headless, ui, dirs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors name files and values from other people: no control character of theirs
            // reaches the terminal (the message's own line breaks stay).
            let text = format!("{e:#}");
            let lines: Vec<_> = text.lines().map(suggestive::untrusted::escaped).collect();
            eprintln!("error: {}", lines.join("\n"));
            ExitCode::FAILURE
        }
    }
}

/// A progress bar on stderr for a cache build, when stderr is a terminal.
fn loading_bar() -> Option<suggestive::data::LoadProgress> {
    if !stderr_is_terminal() {
        return None;
    }
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(
            "loading {bar:30.cyan/blue} {pos}/{len} patients  {elapsed_precise} (eta {eta})",
        )
        .expect("valid template"),
    );
    Some(std::sync::Arc::new(move |done, total| {
        if bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total as u64);
        }
        bar.set_position(done as u64);
        if done == total {
            bar.finish_and_clear();
        }
    }))
}

fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
