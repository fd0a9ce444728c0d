//! README.md runs: every fenced shell (and Python) block carries a marker that says how the test
//! treats it, runnable blocks are run in order in a fresh copy of the repository's demo data, and
//! every `cyclestudio` command anywhere in the README (blocks and inline code) is checked against
//! the command line's `--help`, so a renamed flag or subcommand fails the suite.
//!
//! Markers are HTML comments on the line before a block (invisible on a rendered page):
//! - `<!-- readme-test: run -->` runs the block as it is;
//! - `<!-- readme-test: run; replace "A" "B"; image F; omit "C" -->` runs it after rewriting A
//!   to B (e.g. a long training to a few steps; `"<repo>"` in B is the repository), writing a
//!   small test image at F first, and leaving out lines containing C;
//! - `<!-- readme-test: skip REASON -->` does not run it (REASON: what CI lacks); it is listed
//!   and its commands' flags are still checked.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const MARKER: &str = "<!-- readme-test:";

#[derive(Debug)]
enum Action {
    Run { replaces: Vec<(String, String)>, images: Vec<String>, omits: Vec<String> },
    Skip(String),
}

#[derive(Debug)]
struct Block {
    line: usize,
    lang: String,
    text: String,
    action: Action,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The quoted strings of `s`, in order.
fn quoted(s: &str) -> Vec<String> {
    s.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

fn parse_marker(marker: &str, line: usize) -> Action {
    let body = marker.trim().trim_start_matches(MARKER).trim_end_matches("-->").trim();
    if let Some(reason) = body.strip_prefix("skip") {
        assert!(!reason.trim().is_empty(), "README.md:{line}: a skipped block needs a reason");
        return Action::Skip(reason.trim().to_string());
    }
    let mut parts = body.split(';').map(str::trim);
    assert_eq!(parts.next(), Some("run"), "README.md:{line}: marker must be `run…` or `skip REASON`");
    let (mut replaces, mut images, mut omits) = (Vec::new(), Vec::new(), Vec::new());
    for part in parts.filter(|p| !p.is_empty()) {
        if part.starts_with("replace") {
            let q = quoted(part);
            assert_eq!(q.len(), 2, "README.md:{line}: replace \"A\" \"B\"");
            replaces.push((q[0].clone(), q[1].clone()));
        } else if let Some(f) = part.strip_prefix("image ") {
            images.push(f.trim().to_string());
        } else if part.starts_with("omit") {
            omits.extend(quoted(part));
        } else {
            panic!("README.md:{line}: unknown marker part '{part}'");
        }
    }
    Action::Run { replaces, images, omits }
}

/// The fenced blocks of the README in shell or Python, each with its marker.
fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        let end = (i + 1..lines.len()).find(|&j| lines[j].starts_with("```")).expect("closed block");
        i = end + 1;
        let lang = lang.trim().to_string();
        if !matches!(lang.as_str(), "sh" | "bash" | "python") {
            continue;
        }
        let marker = lines[..start].iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or_default();
        assert!(
            marker.trim_start().starts_with(MARKER),
            "README.md:{}: this {lang} block has no `{MARKER} run|skip … -->` marker on the line before it",
            start + 1
        );
        out.push(Block { line: start + 1, lang, text: lines[start + 1..end].join("\n"), action: parse_marker(marker, start) });
    }
    out
}

/// Every `cyclestudio …` command in `text` (line continuations joined), as its words.
fn commands(text: &str) -> Vec<Vec<String>> {
    let joined = text.replace("\\\n", " ").replace("cargo run --release --", "cyclestudio");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.split(" # ").next().unwrap_or_default();
        // Not split at '|': synopses use it between alternatives.
        for part in line.split(';').flat_map(|p| p.split("&&")) {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let Some(at) = words.iter().position(|w| *w == "cyclestudio") {
                out.push(words[at + 1..].iter().map(|w| w.to_string()).collect());
            }
        }
    }
    out
}

/// Inline code spans of the README that are cyclestudio commands.
fn inline_commands(readme: &str) -> Vec<String> {
    let mut in_block = false;
    let mut out = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            if span.starts_with("cyclestudio ") || span.starts_with("cargo run --release -- ") {
                out.push(span.to_string());
            }
        }
    }
    out
}

const SUBCOMMANDS: [&str; 11] = ["train", "dataset", "translate", "convert", "import", "export", "tui", "eval", "score", "bench", "help"];

/// Checks that the subcommand of `words` exists and that each of its `--flags` is in its help.
fn check_flags(words: &[String], help: &mut HashMap<Vec<String>, String>, bin: &Path) -> Result<(), String> {
    let Some(first) = words.first() else { return Ok(()) };
    let first = first.trim_start_matches('[');
    if first.starts_with('-') {
        return Ok(()); // `cyclestudio --help` and the like
    }
    if !SUBCOMMANDS.contains(&first) {
        return Err(format!("unknown subcommand '{first}' in `cyclestudio {}`", words.join(" ")));
    }
    let mut sub = vec![first.to_string()];
    if first == "dataset" {
        sub.push(words.get(1).cloned().unwrap_or_default());
    }
    let text = help.entry(sub.clone()).or_insert_with(|| {
        let out = Command::new(bin).args(&sub).arg("--help").output().expect("binary runs");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    if !text.contains("Usage:") {
        return Err(format!("`cyclestudio {} --help` fails: {text}", sub.join(" ")));
    }
    for w in words {
        let w = w.trim_matches(|c| matches!(c, '[' | ']' | '(' | ')' | ','));
        let Some(flag) = w.strip_prefix("--") else { continue };
        let flag = flag.split(['=', '|', '[', ']']).next().unwrap_or_default();
        if flag.is_empty() || flag == "help" {
            continue;
        }
        let known = text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=').any(|t| t == format!("--{flag}"));
        if !known {
            return Err(format!("`cyclestudio {}` has no flag --{flag} (in `cyclestudio {}`)", sub.join(" "), words.join(" ")));
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The README as a new user has it: the repository's demo data, default model, tools and
/// fixtures in a fresh folder, and `cyclestudio` on the PATH.
fn fresh_copy() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["datasets/demo", "checkpoints/default", "tools", "tests/fixtures", "bench"] {
        copy_dir(&repo().join(sub), &dir.path().join(sub));
    }
    let bin = dir.path().join(".bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cyclestudio"), bin.join("cyclestudio")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    (dir, path)
}

fn python_has(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn every_readme_command_runs_or_is_marked_and_its_flags_exist() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_cyclestudio"));
    let blocks = blocks(&readme);
    assert!(blocks.iter().any(|b| matches!(b.action, Action::Run { .. })), "no runnable block found");

    // Flags and subcommands of every command, run or not, and of inline ones.
    let mut help = HashMap::new();
    let mut problems = Vec::new();
    for b in blocks.iter().filter(|b| b.lang != "python") {
        for words in commands(&b.text) {
            if let Err(e) = check_flags(&words, &mut help, bin) {
                problems.push(format!("README.md:{}: {e}", b.line));
            }
        }
    }
    for span in inline_commands(&readme) {
        for words in commands(&span) {
            if let Err(e) = check_flags(&words, &mut help, bin) {
                problems.push(format!("README.md (inline `{span}`): {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "README commands that no longer exist:\n{}", problems.join("\n"));

    // Run the runnable blocks in order, in one fresh copy (later blocks use earlier results).
    let (dir, path) = fresh_copy();
    let work = dir.path();
    let mut skipped = Vec::new();
    for b in &blocks {
        let (replaces, images, omits) = match &b.action {
            Action::Skip(reason) => {
                skipped.push(format!("README.md:{} ({}): {reason}", b.line, b.lang));
                continue;
            }
            Action::Run { replaces, images, omits } => (replaces, images, omits),
        };
        let missing: Vec<&str> = ["onnxruntime", "numpy", "PIL"].into_iter().filter(|m| b.lang == "python" && !python_has(m)).collect();
        if !missing.is_empty() {
            // .ci/run installs them; elsewhere the block is listed as not run.
            assert!(std::env::var_os("CI").is_none(), "README.md:{}: CI must have the Python modules {missing:?} for this block", b.line);
            skipped.push(format!("README.md:{} (python): {missing:?} not installed here", b.line));
            continue;
        }
        let mut text = b.text.lines().filter(|l| !omits.iter().any(|o| l.contains(o.as_str()))).collect::<Vec<_>>().join("\n");
        for (from, to) in replaces {
            assert!(text.contains(from.as_str()), "README.md:{}: marker replaces \"{from}\", which the block does not contain", b.line);
            text = text.replace(from.as_str(), &to.replace("<repo>", &repo().display().to_string()));
        }
        for img in images {
            let grey = image::GrayImage::from_fn(72, 48, |x, y| image::Luma([(x * 3 + y * 2) as u8]));
            image::DynamicImage::ImageLuma8(grey).to_rgb8().save(work.join(img)).unwrap();
        }
        let text = text.replace("cargo run --release --", "cyclestudio");
        let out = if b.lang == "python" {
            std::fs::write(work.join("readme_block.py"), &text).unwrap();
            Command::new("python3").arg("readme_block.py").current_dir(work).env("PATH", &path).output().unwrap()
        } else {
            Command::new("bash").args(["-euo", "pipefail", "-c", &text]).current_dir(work).env("PATH", &path).output().unwrap()
        };
        assert!(
            out.status.success(),
            "README.md:{}: the block failed:\n{text}\n--- output ---\n{}{}",
            b.line,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Paths the README points a user to after the quick start exist now.
    for span in readme.split('`').skip(1).step_by(2) {
        if span.starts_with("checkpoints/demo/") && !span.contains(' ') {
            assert!(work.join(span).exists(), "README mentions `{span}`, which the quick start did not make");
        }
    }
    println!("README blocks not run (listed, with why):\n{}", skipped.join("\n"));
}

#[test]
fn a_renamed_flag_is_caught() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cyclestudio"));
    let mut help = HashMap::new();
    let ok: Vec<String> = "translate x.png --to color --margin 0".split(' ').map(String::from).collect();
    assert!(check_flags(&ok, &mut help, bin).is_ok());
    let renamed: Vec<String> = "translate x.png --to color --marginal 0".split(' ').map(String::from).collect();
    assert!(check_flags(&renamed, &mut help, bin).unwrap_err().contains("--marginal"));
    let unknown: Vec<String> = "transmogrify x.png".split(' ').map(String::from).collect();
    assert!(check_flags(&unknown, &mut help, bin).is_err());
}
