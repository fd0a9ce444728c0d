//! The documentation runs: README.md, every page of the guide in docs/ and bench/RESULTS.md. Every
//! fenced shell (and Python) block carries a marker that says how the test treats it; the runnable
//! blocks of each page are run in order in a fresh copy of the repository's demo data (pages side
//! by side); every `cyclestudio` command anywhere on a page (blocks and inline code) is checked
//! against the command line's `--help`, so a renamed flag or subcommand fails the suite; and every
//! relative link and image points to a file, and to a heading of it where it names one.
//!
//! Markers are HTML comments on the line before a block (invisible on a rendered page):
//! - `<!-- readme-test: run -->` runs the block as it is;
//! - `<!-- readme-test: run; replace "A" "B"; image F; omit "C" -->` runs it after rewriting A
//!   to B (e.g. a long training to a few steps; `"<repo>"` in B is the repository), writing a
//!   small test image at F first, and leaving out lines containing C;
//! - `<!-- readme-test: skip REASON -->` does not run it (REASON: what CI lacks); it is listed
//!   and its commands' flags are still checked.
#![cfg(unix)] // runs the documents' shell blocks with sh

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

/// The pages whose commands are run and checked: README.md, the guide's pages, the measurements.
fn pages() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    let mut out = vec!["README.md".to_string()];
    out.extend(docs);
    out.push("bench/RESULTS.md".into());
    out
}

fn read(page: &str) -> String {
    std::fs::read_to_string(repo().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"))
}

/// The quoted strings of `s`, in order.
fn quoted(s: &str) -> Vec<String> {
    s.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

fn parse_marker(page: &str, marker: &str, line: usize) -> Action {
    let body = marker.trim().trim_start_matches(MARKER).trim_end_matches("-->").trim();
    if let Some(reason) = body.strip_prefix("skip") {
        assert!(!reason.trim().is_empty(), "{page}:{line}: a skipped block needs a reason");
        return Action::Skip(reason.trim().to_string());
    }
    let mut parts = body.split(';').map(str::trim);
    assert_eq!(parts.next(), Some("run"), "{page}:{line}: marker must be `run…` or `skip REASON`");
    let (mut replaces, mut images, mut omits) = (Vec::new(), Vec::new(), Vec::new());
    for part in parts.filter(|p| !p.is_empty()) {
        if part.starts_with("replace") {
            let q = quoted(part);
            assert_eq!(q.len(), 2, "{page}:{line}: replace \"A\" \"B\"");
            replaces.push((q[0].clone(), q[1].clone()));
        } else if let Some(f) = part.strip_prefix("image ") {
            images.push(f.trim().to_string());
        } else if part.starts_with("omit") {
            omits.extend(quoted(part));
        } else {
            panic!("{page}:{line}: unknown marker part '{part}'");
        }
    }
    Action::Run { replaces, images, omits }
}

/// The fenced blocks of a page in shell or Python, each with its marker.
fn blocks(page: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        let end = (i + 1..lines.len()).find(|&j| lines[j].starts_with("```")).unwrap_or_else(|| panic!("{page}:{}: block not closed", i + 1));
        i = end + 1;
        let lang = lang.trim().to_string();
        if !matches!(lang.as_str(), "sh" | "bash" | "shell" | "console" | "python") {
            continue;
        }
        let marker = lines[..start].iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or_default();
        assert!(
            marker.trim_start().starts_with(MARKER),
            "{page}:{}: this {lang} block has no `{MARKER} run|skip … -->` marker on the line before it",
            start + 1
        );
        out.push(Block { line: start + 1, lang, text: lines[start + 1..end].join("\n"), action: parse_marker(page, marker, start) });
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

/// The page's text outside fenced blocks, as paragraphs (an inline code span never crosses one).
fn paragraphs(text: &str) -> Vec<String> {
    let mut in_block = false;
    let mut out = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            out.push(String::new());
            continue;
        }
        if in_block {
            continue;
        }
        if line.trim().is_empty() {
            out.push(String::new());
        } else {
            let last = out.last_mut().unwrap();
            last.push_str(line);
            last.push(' ');
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Inline code spans of a page that are cyclestudio commands.
fn inline_commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in paragraphs(text) {
        for span in para.split('`').skip(1).step_by(2) {
            if span.starts_with("cyclestudio ") || span.starts_with("cargo run --release -- ") {
                out.push(span.to_string());
            }
        }
    }
    out
}

/// The subcommands the binary has (from its `--help`).
fn subcommands(bin: &Path) -> Vec<String> {
    let out = Command::new(bin).arg("--help").output().expect("binary runs");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let list = help.split("Commands:").nth(1).expect("--help lists the commands");
    list.lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Checks that the subcommand of `words` exists and that each of its `--flags` is in its help.
fn check_flags(mut words: &[String], help: &mut HashMap<Vec<String>, String>, bin: &Path) -> Result<(), String> {
    let Some(first) = words.first() else { return Ok(()) };
    let first = first.trim_start_matches('[');
    if first.starts_with('-') {
        return Ok(()); // `cyclestudio --help` and the like
    }
    let known = help.entry(Vec::new()).or_insert_with(|| subcommands(bin).join(" "));
    if !known.split(' ').any(|s| s == first) {
        return Err(format!("unknown subcommand '{first}' in `cyclestudio {}`", words.join(" ")));
    }
    if first == "sweep" {
        // A sweep's `--vary FLAG=…` and the words after `--` are `train` flags.
        let split = words.iter().position(|w| w == "--").unwrap_or(words.len());
        let mut train: Vec<String> = vec!["train".into()];
        train.extend(words[split..].iter().skip(1).cloned());
        train.extend(words.windows(2).filter(|p| p[0] == "--vary").filter_map(|p| p[1].split_once('=').map(|(f, _)| format!("--{f}"))));
        check_flags(&train, help, bin)?;
        words = &words[..split];
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

/// A page as a new user has it: the repository's demo data, default model, tools and fixtures in
/// a fresh folder, and `cyclestudio` on the PATH.
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

/// Checks the flags of every command on `page`; the problems found.
fn check_page_commands(page: &str, text: &str, blocks: &[Block], help: &mut HashMap<Vec<String>, String>) -> Vec<String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_cyclestudio"));
    let mut problems = Vec::new();
    for b in blocks.iter().filter(|b| b.lang != "python") {
        for words in commands(&b.text) {
            if let Err(e) = check_flags(&words, help, bin) {
                problems.push(format!("{page}:{}: {e}", b.line));
            }
        }
    }
    for span in inline_commands(text) {
        for words in commands(&span) {
            if let Err(e) = check_flags(&words, help, bin) {
                problems.push(format!("{page} (inline `{span}`): {e}"));
            }
        }
    }
    problems
}

/// The folder a page's blocks ran in, and the blocks not run, with why.
type PageRun = (tempfile::TempDir, Vec<String>);

/// Runs the runnable blocks of `page` in order, in one fresh copy (later blocks use earlier
/// results); the blocks not run, with why. Panics with the block's output if one fails.
fn run_page(page: &str, blocks: &[Block]) -> PageRun {
    let (dir, path) = fresh_copy();
    let work = dir.path();
    let mut skipped = Vec::new();
    for b in blocks {
        let (replaces, images, omits) = match &b.action {
            Action::Skip(reason) => {
                skipped.push(format!("{page}:{} ({}): {reason}", b.line, b.lang));
                continue;
            }
            Action::Run { replaces, images, omits } => (replaces, images, omits),
        };
        let missing: Vec<&str> = ["onnxruntime", "numpy", "PIL"].into_iter().filter(|m| b.lang == "python" && !python_has(m)).collect();
        if !missing.is_empty() {
            // .ci/run installs them; elsewhere the block is listed as not run.
            assert!(std::env::var_os("CI").is_none(), "{page}:{}: CI must have the Python modules {missing:?} for this block", b.line);
            skipped.push(format!("{page}:{} (python): {missing:?} not installed here", b.line));
            continue;
        }
        let mut text = b.text.lines().filter(|l| !omits.iter().any(|o| l.contains(o.as_str()))).collect::<Vec<_>>().join("\n");
        for (from, to) in replaces {
            assert!(text.contains(from.as_str()), "{page}:{}: marker replaces \"{from}\", which the block does not contain", b.line);
            text = text.replace(from.as_str(), &to.replace("<repo>", &repo().display().to_string()));
        }
        for img in images {
            let grey = image::GrayImage::from_fn(72, 48, |x, y| image::Luma([(x * 3 + y * 2) as u8]));
            image::DynamicImage::ImageLuma8(grey).to_rgb8().save(work.join(img)).unwrap();
        }
        let text = text.replace("cargo run --release --", "cyclestudio");
        let started = std::time::Instant::now();
        let out = if b.lang == "python" {
            std::fs::write(work.join("readme_block.py"), &text).unwrap();
            Command::new("python3").arg("readme_block.py").current_dir(work).env("PATH", &path).output().unwrap()
        } else {
            Command::new("bash").args(["-euo", "pipefail", "-c", &text]).current_dir(work).env("PATH", &path).output().unwrap()
        };
        assert!(
            out.status.success(),
            "{page}:{}: the block failed:\n{text}\n--- output ---\n{}{}",
            b.line,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{page}:{} ran in {:.1} s", b.line, started.elapsed().as_secs_f64());
    }
    (dir, skipped)
}

#[test]
fn every_documented_command_runs_or_is_marked_and_its_flags_exist() {
    let pages = pages();
    assert!(pages.len() > 3, "the guide's pages are found: {pages:?}");
    let texts: Vec<(String, String)> = pages.iter().map(|p| (p.clone(), read(p))).collect();
    let parsed: Vec<(String, String, Vec<Block>)> = texts.into_iter().map(|(p, t)| {
        let b = blocks(&p, &t);
        (p, t, b)
    }).collect();
    for page in ["README.md", "docs/training.md"] {
        let (_, _, b) = parsed.iter().find(|(p, _, _)| p == page).expect("page exists");
        assert!(b.iter().any(|b| matches!(b.action, Action::Run { .. })), "{page}: no runnable block found");
    }

    // Flags and subcommands of every command, run or not, and of inline ones.
    let mut help = HashMap::new();
    let problems: Vec<String> = parsed.iter().flat_map(|(p, t, b)| check_page_commands(p, t, b, &mut help)).collect();
    assert!(problems.is_empty(), "documented commands that no longer exist:\n{}", problems.join("\n"));

    // Each page's runnable blocks in its own fresh copy, the pages side by side.
    let results: Vec<(String, std::thread::Result<PageRun>)> = std::thread::scope(|s| {
        let handles: Vec<_> = parsed.iter().map(|(p, _, b)| (p.clone(), s.spawn(move || run_page(p, b)))).collect();
        handles.into_iter().map(|(p, h)| (p, h.join())).collect()
    });
    let mut skipped = Vec::new();
    let mut readme_copy = None;
    for (page, result) in results {
        match result {
            Ok((dir, s)) => {
                skipped.extend(s);
                if page == "README.md" {
                    readme_copy = Some(dir);
                }
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    // Paths the README points a user to after the quick start exist now.
    let work = readme_copy.expect("README ran");
    for span in read("README.md").split('`').skip(1).step_by(2) {
        if span.starts_with("checkpoints/demo/") && !span.contains(' ') {
            assert!(work.path().join(span).exists(), "README mentions `{span}`, which the quick start did not make");
        }
    }
    println!("blocks not run (listed, with why):\n{}", skipped.join("\n"));
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
    assert!(subcommands(bin).iter().any(|s| s == "convert"));
}

#[test]
fn an_unmarked_block_is_caught() {
    let page = "Text.\n\n```sh\ncyclestudio translate x.png --to color\n```\n";
    let caught = std::panic::catch_unwind(|| blocks("page.md", page));
    assert!(caught.is_err(), "a shell block without a marker must fail the test");
    let marked = page.replace("```sh", "<!-- readme-test: skip an example -->\n```sh");
    assert!(matches!(blocks("page.md", &marked)[0].action, Action::Skip(_)));
}

/// The anchor GitHub gives a heading: lower case, punctuation other than `-` and `_` removed,
/// spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown page's headings (duplicates numbered as GitHub numbers them).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if in_block || !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let s = slug(line[hashes..].trim().trim_end_matches('#'));
        let n = seen.entry(s.clone()).or_insert(0);
        out.push(if *n == 0 { s.clone() } else { format!("{s}-{n}") });
        *n += 1;
    }
    out
}

/// The link targets of a markdown page outside code: `[text](target)`, `![alt](target)`,
/// `[ref]: target` and HTML `src="…"` / `href="…"`, each with its line.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        // Code spans hold examples, not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for (at, _) in prose.match_indices("](") {
            let rest = &prose[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or_default().trim_matches(['<', '>']);
            out.push((n + 1, target.to_string()));
        }
        for attr in ["src=\"", "href=\""] {
            for (at, _) in prose.match_indices(attr) {
                let rest = &prose[at + attr.len()..];
                out.push((n + 1, rest[..rest.find('"').unwrap_or(rest.len())].to_string()));
            }
        }
        let t = prose.trim_start();
        if t.starts_with('[') && !t.starts_with("[!") {
            if let Some((_, target)) = t.split_once("]: ") {
                out.push((n + 1, target.split_whitespace().next().unwrap_or_default().to_string()));
            }
        }
    }
    out
}

#[test]
fn every_relative_link_and_image_points_to_a_file_and_heading_that_exist() {
    let mut files: Vec<String> = pages();
    files.push("CHANGELOG.md".into());
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in &files {
        let text = read(page);
        let dir = repo().join(page).parent().unwrap().to_path_buf();
        for (line, target) in links(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let file: PathBuf = if path.is_empty() { repo().join(page) } else { dir.join(path) };
            checked += 1;
            if !file.exists() {
                problems.push(format!("{page}:{line}: {target}: {} does not exist", file.display()));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            let heads = if file.extension().is_some_and(|e| e == "md") { anchors(&std::fs::read_to_string(&file).unwrap()) } else { Vec::new() };
            if !heads.iter().any(|h| h == fragment) {
                problems.push(format!("{page}:{line}: {target}: no heading with the anchor #{fragment} in {}", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "dead links:\n{}", problems.join("\n"));
    assert!(checked > 50, "only {checked} links found");
}

#[test]
fn anchors_follow_githubs_rules() {
    let page = "# Precision (`--precision fp32|bf16`)\n## Grey → colour\n```sh\n# not a heading\n```\n## Grey → colour\n### 2026-11-30 — CUT's step: 0.82× → 0.67×\n";
    assert_eq!(
        anchors(page),
        ["precision---precision-fp32bf16", "grey--colour", "grey--colour-1", "2026-11-30--cuts-step-082--067"]
    );
    let links = links("See [a](docs/a.md#x) and ![b](b.jpg), `[not](c.md)`.\n<img src=\"d.jpg\">\n[ref]: e.md\n");
    assert_eq!(links.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), ["docs/a.md#x", "b.jpg", "d.jpg", "e.md"]);
}
