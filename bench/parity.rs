//! A training run of one of a preset's networks on the demo phantom, recorded for the PyTorch
//! twin (engine::replay, bench/twin.py; driven by bench/parity.py). The preset gives the
//! preprocessing and the network's settings; the first three quarters of the patients are
//! trained on and the rest held out. Prints the run's trace as one JSON line.
//!
//! Arguments: OUT_DIR vae|unet PRESET as-built|tch-default EPOCHS PHANTOM_DIR

use std::path::PathBuf;

use suggestive::data::{Dataset, LoadOptions};
use suggestive::engine::replay::{self, Network, ReplaySpec, Start};
use suggestive::phantom;

fn main() -> anyhow::Result<()> {
    suggestive::engine::host_memory::keep_freed_blocks();
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    anyhow::ensure!(
        a.len() == 6,
        "usage: parity OUT_DIR vae|unet PRESET as-built|tch-default EPOCHS PHANTOM_DIR"
    );
    let (out, phantom_dir) = (PathBuf::from(&a[0]), PathBuf::from(&a[5]));
    let cfg = suggestive::session::preset(&a[2])?;
    let start = match a[3].as_str() {
        "as-built" => Start::AsBuilt,
        "tch-default" => Start::TchDefault,
        other => anyhow::bail!("start must be as-built or tch-default, not {other:?}"),
    };
    let epochs: usize = a[4].parse()?;
    if !phantom_dir.join("done").exists() {
        phantom::generate(&phantom::demo_config(), &phantom_dir, &|| {})?;
        std::fs::write(phantom_dir.join("done"), "")?;
    }
    let mut opts = LoadOptions::new(phantom_dir.join("cache"));
    opts.preprocessing = cfg.dataset.preprocessing();
    let (ds, _) = Dataset::load(&phantom_dir, &opts)?;
    let patients = ds.patients();
    let cut = patients.len() * 3 / 4;
    let slices = |ps: &[suggestive::data::PatientInfo]| -> Vec<usize> {
        ps.iter()
            .flat_map(|p| p.first_slice..p.first_slice + p.slices)
            .collect()
    };
    let (network, lr, batch_size) = match a[1].as_str() {
        "vae" => (
            Network::Vae {
                config: cfg.vae.net(),
                kl_weight: cfg.vae.kl_weight,
            },
            cfg.vae.lr,
            cfg.vae.batch_size,
        ),
        "unet" => (
            Network::Unet {
                config: cfg.unet.net(),
            },
            cfg.unet.lr,
            cfg.unet.batch_size,
        ),
        other => anyhow::bail!("network must be vae or unet, not {other:?}"),
    };
    let spec = ReplaySpec {
        network,
        start,
        lr,
        batch_size,
        epochs,
        seed: cfg.experiment.seed,
        train: slices(&patients[..cut]),
        held_out: slices(&patients[cut..]),
    };
    let trace = replay::record(&ds, &spec, &out)?;
    println!("{}", serde_json::to_string(&trace)?);
    Ok(())
}
