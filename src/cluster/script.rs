//! The job scripts: a template (the default, `~/.config/suggestive/slurm.sbatch` or
//! `--template FILE`) with its placeholders filled in. Sites put their own lines (modules to
//! load, an environment to activate) in the template; the `#SBATCH` lines and the command come
//! from here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Used where no template is given and the user has none.
pub const DEFAULT_TEMPLATE: &str = "#!/bin/bash
{{SBATCH}}
# Lines for this cluster (modules to load, an environment to activate) go here: copy this file
# to ~/.config/suggestive/slurm.sbatch, or pass --template FILE, and add them.
set -euo pipefail
{{COMMAND}}
";

/// The placeholders a template may use; `{{SBATCH}}` and `{{COMMAND}}` it must.
pub const PLACEHOLDERS: [(&str, &str); 5] = [
    (
        "SBATCH",
        "the #SBATCH lines: job name, array, output, time, resources, extra arguments",
    ),
    (
        "COMMAND",
        "what the job runs (a repeat with the GPUs Slurm gave it, or the report)",
    ),
    ("SESSION", "the session folder"),
    ("SUGGESTIVE", "the suggestive binary"),
    ("JOB", "`run` or `report`"),
];

/// The user's template: `--template FILE`, else `~/.config/suggestive/slurm.sbatch` if it
/// exists, else the default. Returns its text and where it came from.
pub fn load_template(given: Option<&Path>) -> Result<(String, String)> {
    let user = crate::paths::config_dir().join("slurm.sbatch");
    let path: Option<PathBuf> = match given {
        Some(p) => Some(p.to_path_buf()),
        None => user.is_file().then_some(user),
    };
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read the Slurm template {}", p.display()))?;
            Ok((text, p.display().to_string()))
        }
        None => Ok((
            DEFAULT_TEMPLATE.to_string(),
            "the default template".to_string(),
        )),
    }
}

/// `template` with `values` (placeholder name, text) filled in. An unknown placeholder, or a
/// template without `{{SBATCH}}` or `{{COMMAND}}`, is an error that names `origin`.
pub fn fill(template: &str, origin: &str, values: &[(&str, String)]) -> Result<String> {
    for required in ["SBATCH", "COMMAND"] {
        if !template.contains(&format!("{{{{{required}}}}}")) {
            bail!(
                "Slurm template {origin} has no {{{{{required}}}}} placeholder (placeholders: {})",
                names()
            );
        }
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find("}}") else {
            bail!("Slurm template {origin}: a {{{{ without its }}}}");
        };
        let name = &rest[start + 2..start + 2 + len];
        match values.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => out.push_str(v),
            None => bail!(
                "Slurm template {origin}: unknown placeholder {{{{{name}}}}} (placeholders: {})",
                names()
            ),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn names() -> String {
    let v: Vec<String> = PLACEHOLDERS
        .iter()
        .map(|(n, _)| format!("{{{{{n}}}}}"))
        .collect();
    v.join(", ")
}

use crate::untrusted::shell_quote;

/// Task numbers as Slurm's `--array` takes them: `1-3,5,7-9`.
pub fn array_ranges(tasks: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < tasks.len() {
        let mut j = i;
        while j + 1 < tasks.len() && tasks[j + 1] == tasks[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            tasks[i].to_string()
        } else {
            format!("{}-{}", tasks[i], tasks[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// How long before its time limit Slurm warns a task (`--signal=B:USR1@…`): time for the run
/// to finish its batch and write a checkpoint.
pub const WARN_SECONDS: u32 = 120;

/// The array task's command: the repeat numbered by the task, on the GPUs Slurm made visible
/// (CUDA numbers them from 0 in each task): several give `--devices` (the arms of a round side
/// by side), one gives `--device cuda:0`, none leaves the session's device setting.
///
/// The run goes in the background so that this shell can pass signals on: Slurm's warning
/// before the time limit (USR1, sent to this shell only) and its SIGTERM. The run stops at the
/// end of its batch with a checkpoint and exits with status 130; after the warning, the task
/// puts itself back in the queue (`scontrol requeue`) to resume where it stopped. (Preemption
/// and `scontrol requeue` are requeued by Slurm; a `scancel` is not.)
pub fn run_command(binary: &Path, session: &Path) -> String {
    format!(
        r#"devices=()
if [ -n "${{CUDA_VISIBLE_DEVICES:-}}" ] && [ "$CUDA_VISIBLE_DEVICES" != "NoDevFiles" ]; then
  n=$(( $(printf %s "$CUDA_VISIBLE_DEVICES" | tr -cd , | wc -c) + 1 ))
  if [ "$n" -gt 1 ]; then
    devices=(--devices "$(seq -s, -f 'cuda:%g' 0 $((n - 1)))")
  else
    devices=(--device cuda:0)
  fi
fi
# The traps come first: a signal that arrives as the run starts is not lost.
run=""
requeue=""
trap 'requeue=1; [ -n "$run" ] && kill -USR1 "$run" 2>/dev/null' USR1
trap '[ -n "$run" ] && kill -TERM "$run" 2>/dev/null' TERM
{} run {} --repeats "$SLURM_ARRAY_TASK_ID" "${{devices[@]}}" &
run=$!
status=0
while :; do
  wait "$run" && status=0 || status=$?
  kill -0 "$run" 2>/dev/null || break
done
if [ "$status" -eq 130 ] && [ -n "$requeue" ] && [ -n "${{SLURM_JOB_ID:-}}" ]; then
  echo "stopped before the time limit; requeueing $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status""#,
        shell_quote(&binary.display().to_string()),
        shell_quote(&session.display().to_string())
    )
}

/// The report job's command.
pub fn report_command(binary: &Path, session: &Path) -> String {
    format!(
        "exec {} report {}",
        shell_quote(&binary.display().to_string()),
        shell_quote(&session.display().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_lists_become_ranges() {
        assert_eq!(array_ranges(&[1, 2, 3]), "1-3");
        assert_eq!(array_ranges(&[1, 3, 4, 5, 9]), "1,3-5,9");
        assert_eq!(array_ranges(&[7]), "7");
    }

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let v = [
            ("SBATCH", "#SBATCH -J x".to_string()),
            ("COMMAND", "true".to_string()),
        ];
        let t = "#!/bin/bash\n{{SBATCH}}\nmodule load cuda\n{{COMMAND}}\n";
        assert_eq!(
            fill(t, "t", &v).unwrap(),
            "#!/bin/bash\n#SBATCH -J x\nmodule load cuda\ntrue\n"
        );
        let e = fill("{{SBATCH}} {{COMMAND}} {{NOPE}}", "my.sbatch", &v).unwrap_err();
        assert!(
            e.to_string()
                .contains("my.sbatch: unknown placeholder {{NOPE}}"),
            "{e}"
        );
        let e = fill("{{SBATCH}} only", "my.sbatch", &v).unwrap_err();
        assert!(e.to_string().contains("no {{COMMAND}} placeholder"), "{e}");
    }
}
