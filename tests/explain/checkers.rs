//! Outside checkers for `portcullis explain` output, for integration tests:
//! the official mermaid CLI renders Mermaid diagrams in Debian's headless
//! chromium (`check-mermaid.sh`), and the official OpenAPI 3.1 JSON Schema
//! plus the spec's cross-reference rules check OpenAPI documents
//! (`check-openapi.mjs`). Both live beside this file.
//!
//! Needs Node.js 20+ on PATH, `npm ci --prefix tests/explain` and
//! `/usr/bin/chromium` (`apt-get install chromium`); CI's `.ci/run` does
//! all three. A missing piece panics with the command that fixes it: a
//! setup problem is never reported as a bad document.
//!
//! Use from a test file in `tests/`:
//!
//! ```ignore
//! #[path = "explain/checkers.rs"]
//! mod checkers;
//!
//! checkers::mermaid(&[("orders", &diagram)]).unwrap();          // Ok(stdout)
//! let why = checkers::openapi("gateway", &doc).unwrap_err();    // Err(report)
//! ```
//!
//! Rendering starts chromium once per call (about 1.5 s, then about 0.6 s
//! per diagram), so pass every diagram of a test to one [`mermaid`] call.
#![allow(dead_code)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `tests/explain`, where the scripts and their `node_modules` live.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explain")
}

/// Renders each `(name, source)` diagram with mmdc in one chromium run.
/// `Ok` holds the checker's output; `Err` names the first diagram that
/// failed and carries mermaid's own message.
pub fn mermaid(diagrams: &[(&str, &str)]) -> Result<String, String> {
    let scratch = Scratch::new();
    let files: Vec<PathBuf> = diagrams
        .iter()
        .map(|(name, source)| scratch.write(name, "mmd", source))
        .collect();
    mermaid_files(&files)
}

/// Renders Mermaid files (`.mmd`) with mmdc in one chromium run.
pub fn mermaid_files(files: &[PathBuf]) -> Result<String, String> {
    require_installed("node_modules/.bin/mmdc");
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium not found: apt-get install -y chromium (CI's .ci/run does this)"
    );
    let output = Command::new("bash")
        .arg(dir().join("check-mermaid.sh"))
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash: {e}"));
    verdict("check-mermaid.sh", output)
}

/// Checks one OpenAPI document (YAML or JSON text) as OpenAPI 3.1.
pub fn openapi(name: &str, document: &str) -> Result<String, String> {
    let scratch = Scratch::new();
    let file = scratch.write(name, "yaml", document);
    openapi_files(&[file])
}

/// Checks OpenAPI files (YAML or JSON) as OpenAPI 3.1; `Err` if any fails.
pub fn openapi_files(files: &[PathBuf]) -> Result<String, String> {
    require_installed("node_modules/@seriousme/openapi-schema-validator/package.json");
    let output = Command::new("node")
        .arg(dir().join("check-openapi.mjs"))
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `node` ({e}): install Node.js 20+, then npm ci --prefix tests/explain"
            )
        });
    verdict("check-openapi.mjs", output)
}

fn require_installed(relative: &str) {
    let path = dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run npm ci --prefix tests/explain (needs Node.js 20+ and npm; \
         CI's .ci/run does this)",
        path.display()
    );
}

/// Exit 0 → `Ok`, 1 → `Err` (the document is bad); anything else is a
/// broken setup or a bad call and panics.
fn verdict(script: &str, output: Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => Err(format!("{stderr}{stdout}")),
        _ => panic!(
            "{script} could not check ({}):\n{stderr}{stdout}",
            output.status
        ),
    }
}

/// A directory of its own under the system temp dir, removed on drop.
struct Scratch {
    path: PathBuf,
    files: Cell<usize>,
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-explain-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Scratch {
            path,
            files: Cell::new(0),
        }
    }

    /// Writes `text` as `<n>-<name>.<ext>`, the name made file-safe, so
    /// that error reports name the diagram or document (`n` keeps equal
    /// names apart).
    fn write(&self, name: &str, ext: &str, text: &str) -> PathBuf {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let n = self.files.get();
        self.files.set(n + 1);
        let path = self.path.join(format!("{n}-{safe}.{ext}"));
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
