//! Every default that `--help` prints is the one the code uses. clap prints `[default: X]` for the
//! flags it fills in itself; flags the library fills in (a training setting left unset, a model's own
//! colour gain) state theirs as `[default: X]` in their help text. Each of those is compared here with
//! the value the code really uses: a new run's `TrainConfig` from the run request, `TranslateOptions`,
//! the built-in model as it loads, `KidOptions`, `CreateOptions`, … A default written any other way
//! ("(default 64)") is refused, so it cannot escape the comparison.

use clap::{CommandFactory, ValueEnum};
use cyclestudio::cli::Cli;
use cyclestudio::train::request::{Length, RunRequest};
use cyclestudio::train::{Method, Schedule, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A flag's default as it appears in help: `[default: X]`.
#[derive(Debug)]
struct Printed {
    /// The subcommand's path ("" for the top level, "dataset create").
    command: String,
    /// `--flag`.
    flag: String,
    value: String,
    /// clap's own default (`default_value`), which the parsed arguments carry.
    by_clap: bool,
}

fn name_of(value: &impl ValueEnum) -> String {
    value.to_possible_value().expect("not skipped").get_name().to_string()
}

/// Every command with its path, the top level first; `help` is left out.
fn commands() -> Vec<(String, clap::Command)> {
    fn walk(path: &str, cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.to_string(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let p = if path.is_empty() { sub.get_name().to_string() } else { format!("{path} {}", sub.get_name()) };
            walk(&p, sub, out);
        }
    }
    let mut cli = Cli::command();
    cli.build();
    let mut out = Vec::new();
    walk("", &cli, &mut out);
    out
}

/// The `[default: …]` spans of `text`.
fn bracketed_defaults(text: &str) -> Vec<String> {
    text.match_indices("[default: ").map(|(at, m)| {
        let rest = &text[at + m.len()..];
        rest[..rest.find(']').expect("closed [default: …]")].to_string()
    }).collect()
}

/// What `--help` prints as each flag's default, per command.
fn printed_defaults() -> Vec<Printed> {
    let mut out = Vec::new();
    for (path, cmd) in commands() {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
            // Flags without a value (--paired) have clap's `false`, which help does not print.
            let from_clap: Vec<String> = if arg.is_hide_default_value_set() || !arg.get_action().takes_values() {
                Vec::new()
            } else {
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect()
            };
            let from_text = bracketed_defaults(&help);
            assert!(
                from_clap.is_empty() || from_text.is_empty(),
                "`{path} {flag}` has a default from clap ({from_clap:?}) and one in its help ({from_text:?})"
            );
            if !from_clap.is_empty() {
                out.push(Printed { command: path.clone(), flag: flag.clone(), value: from_clap.join(","), by_clap: true });
            }
            for value in from_text {
                out.push(Printed { command: path.clone(), flag: flag.clone(), value, by_clap: false });
            }
        }
    }
    out
}

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/demo")
}

/// A new run's configuration with nothing but the dataset given: every training default.
fn new_run(method: Option<Method>) -> TrainConfig {
    RunRequest { name: "defaults".into(), dataset: Some(demo()), method, ..Default::default() }.new_run().unwrap()
}

fn epochs(cfg: &TrainConfig) -> (u64, u64) {
    match cfg.schedule {
        Schedule::Epochs { epochs, decay_epochs, .. } => (epochs, decay_epochs),
        other => panic!("a run without a length trains the reference's epochs, not {other:?}"),
    }
}

/// The default each flag really has, from the code that applies it. Keys: (command, flag), with
/// command "*" for a flag that means the same in every command that has it.
fn real_defaults() -> BTreeMap<(&'static str, &'static str), String> {
    use cyclestudio::translate::{default_output_path, ModelSource, TranslateOptions, Translator};
    let (cyc, cut, fast) = (new_run(None), new_run(Some(Method::Cut)), new_run(Some(Method::Fastcut)));
    let paired = RunRequest { name: "p".into(), dataset: Some(demo()), paired: true, length: Length::Iters { iters: 1, decay_iters: 1 }, ..Default::default() }
        .new_run()
        .unwrap();
    assert_eq!(cut.pool, fast.pool, "CUT and FastCUT keep the same pool");
    let translate = TranslateOptions::default();
    let builtin = Translator::open(&ModelSource::BuiltIn, "cpu").unwrap();
    let (g, _, _) = builtin.generator_to("color").unwrap();
    let builtin_gain = builtin.spec.translate_chroma_gain.expect("the built-in model sets its colour gain");
    assert_eq!(g.chroma_gain(), builtin_gain, "the built-in model translates at its config's gain");
    assert_ne!(builtin_gain, cyclestudio::model::DEFAULT_CHROMA_GAIN, "the help text names the built-in model's gain because it differs");
    let kid = cyclestudio::eval::fid::KidOptions::default();
    let create = cyclestudio::data::create::CreateOptions::default();
    let spec = cyclestudio::data::DatasetSpec::default();
    let out = default_output_path(Path::new("INPUT_STEM.png"), "DOMAIN");
    let (e, f, g3) = (epochs(&cyc), epochs(&cut), epochs(&fast));
    let on_resume = |v: String| format!("{v}, on --resume the run's");

    let mut m = BTreeMap::new();
    let mut put = |command: &'static str, flag: &'static str, value: String| {
        assert!(m.insert((command, flag), value).is_none(), "{command} {flag} twice");
    };
    // train: a new run's configuration.
    put("train", "--model", cyc.method.to_string());
    put("train", "--generator", cyc.generator.to_string());
    put("train", "--ngf", cyc.ngf.to_string());
    put("train", "--ndf", cyc.ndf.to_string());
    put("train", "--n-layers-d", cyc.n_layers_d.to_string());
    put("train", "--size", cyc.size.to_string());
    put("train", "--load-size", "size·286/256".into());
    put("train", "--epochs", format!("CycleGAN {}, CUT {}, FastCUT {}", e.0, f.0, g3.0));
    put("train", "--decay-epochs", format!("CycleGAN {}, CUT {}, FastCUT {}", e.1, f.1, g3.1));
    put("train", "--batch", cyc.batch.to_string());
    put("train", "--lr", cyc.lr.to_string());
    put("train", "--beta1", cyc.beta1.to_string());
    put("train", "--lambda-cycle", cyc.lambda_cycle.to_string());
    put("train", "--lambda-identity", cyc.lambda_identity.to_string());
    put("train", "--gan-loss", name_of(&cyc.gan_loss));
    put("train", "--pool", format!("{}, CUT and FastCUT {}", cyc.pool, cut.pool));
    put("train", "--lambda-paired", paired.lambda_paired.to_string());
    put("train", "--lambda-gan", cyc.lambda_gan.to_string());
    put("train", "--paired-loss", name_of(&cyc.paired_loss));
    put("train", "--seed", cyc.seed.to_string());
    put("train", "--device", on_resume(cyc.device.clone()));
    put("train", "--precision", on_resume(name_of(&cyc.precision)));
    put("train", "--sample-every", cyc.sample_every.to_string());
    put("train", "--save-every", cyc.save_every.to_string());
    put("train", "--log-every", cyc.log_every.to_string());
    put("train", "--health-every", cyc.health_every.to_string());
    put("*", "--val-a", "the dataset's testA".into());
    put("*", "--val-b", "the dataset's testB".into());
    // translate, convert, eval, score, bench.
    put("*", "--device", cyclestudio::train::request::DEFAULT_DEVICE.into());
    put("*", "--margin", translate.margin.to_string());
    put("*", "--precision", name_of(&translate.precision));
    put("*", "--chroma-gain", format!("from the model's config ({builtin_gain} for the built-in model), else {}", cyclestudio::model::DEFAULT_CHROMA_GAIN));
    put("*", "--temperature", cyclestudio::model::colour_classes::DEFAULT_TEMPERATURE.to_string());
    put("translate", "--model", "the first of CHECKPOINTS/default, the runs in CHECKPOINTS (most recently saved first) and the built-in grey→colour model that can translate to --to".into());
    put("translate", "--output", format!("{} beside the input", out.display()));
    put("translate", "--generation", cyclestudio::checkpoint::LATEST.into());
    put("convert", "--model", "chosen as translate chooses".into());
    put("score", "--model", "chosen as translate chooses".into());
    put("eval", "--kid-subsets", kid.subsets.to_string());
    put("eval", "--kid-subset-size", kid.subset_size.to_string());
    put("eval", "--fid-cache", "~/.cache/cyclestudio/fid, or under $CYCLESTUDIO_CACHE or $XDG_CACHE_HOME when set".into());
    put("export", "--output", "MODEL/export, with --format onnx MODEL/export/DOMAIN.onnx".into());
    put("export", "--to", "domain B, or the model's only direction".into());
    // The cases outside bench::CASES, which a bench without --cases runs.
    put("bench", "--cases", format!("all but {} and {}", cyclestudio::bench::INCEPTION_CASE, cyclestudio::bench::LOOP_CASE));
    put("bench", "--precision", name_of(&cyclestudio::ops::Precision::default()));
    put("sweep", "--short-side", "the trials' training size; with --vary size, the largest".into());
    put("sweep", "--rungs", cyclestudio::sweep::DEFAULT_RUNGS.map(|r| r.to_string()).join(","));
    // datasets and the studio.
    put("dataset create", "--names", format!("{},{}", spec.a.name, spec.b.name));
    put("dataset create", "--channels", format!("{},{}", spec.a.channels, spec.b.channels));
    put("dataset create", "--test-percent", create.test_percent.to_string());
    put("dataset create", "--max-side", create.max_side.to_string());
    put("dataset create", "--datasets", cyclestudio::data::DEFAULT_DATASETS_DIR.into());
    put("tui", "--datasets", cyclestudio::data::DEFAULT_DATASETS_DIR.into());
    m
}

#[test]
fn every_default_help_prints_is_the_one_the_code_uses() {
    let real = real_defaults();
    let printed = printed_defaults();
    let mut problems = Vec::new();
    let mut checked = 0;
    for p in &printed {
        let want = real.get(&(p.command.as_str(), p.flag.as_str())).or_else(|| real.get(&("*", p.flag.as_str())));
        match want {
            Some(want) if *want == p.value => checked += 1,
            Some(want) => problems.push(format!("`cyclestudio {} {}` --help says [default: {}], the code uses {want}", p.command, p.flag, p.value)),
            // clap fills the argument in with the value it prints, and no library value stands
            // behind it (e.g. --checkpoints, convert --batch): right by construction.
            None if p.by_clap => {}
            None => problems.push(format!(
                "`cyclestudio {} {}` --help says [default: {}]: add the value the code uses to real_defaults()",
                p.command, p.flag, p.value
            )),
        }
    }
    assert!(problems.is_empty(), "help defaults that are not the code's:\n{}", problems.join("\n"));
    // Every library-filled default this test knows of is still printed somewhere.
    for (command, flag) in real.keys() {
        let shown = printed.iter().any(|p| (p.command == *command || *command == "*") && p.flag == *flag);
        assert!(shown, "`{command} {flag}`: no --help prints this default any more; remove it from real_defaults()");
    }
    assert!(checked >= real.len(), "checked {checked} defaults against the code");
    println!("{checked} printed defaults checked against the code, {} by clap alone", printed.len() - checked);
    // The printed text is what clap renders.
    for (path, mut cmd) in commands() {
        let rendered = cmd.render_long_help().to_string();
        for p in printed.iter().filter(|p| p.command == path) {
            assert!(rendered.contains(&format!("[default: {}]", p.value)), "`{path} --help` does not show [default: {}]", p.value);
        }
    }
}

#[test]
fn defaults_are_only_stated_in_the_checked_form() {
    // "(default 64)", "1 (default)", "Default fp32" would escape the comparison above.
    let mut problems = Vec::new();
    for (path, cmd) in commands() {
        for arg in cmd.get_arguments() {
            let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let mut rest = help.clone();
            for d in bracketed_defaults(&help) {
                rest = rest.replace(&format!("[default: {d}]"), "");
            }
            let lower = rest.to_lowercase();
            for (at, _) in lower.match_indices("default") {
                let before = &lower[..at];
                let after = &lower[at + "default".len()..];
                let capital = rest[at..].starts_with('D');
                let stated = before.ends_with('(') || after.starts_with(')') || after.starts_with(':') || capital
                    || after.strip_prefix(' ').is_some_and(|a| a.starts_with(|c: char| c.is_ascii_digit()));
                if stated {
                    problems.push(format!("`{path} --{}`: {help}", arg.get_long().unwrap_or(arg.get_id().as_str())));
                }
            }
        }
    }
    assert!(problems.is_empty(), "write these defaults as [default: X] so that they are checked:\n{}", problems.join("\n"));
}

#[test]
fn the_bench_help_lists_every_case() {
    let mut cli = Cli::command();
    let help = cli.find_subcommand_mut("bench").unwrap().render_long_help().to_string();
    for case in cyclestudio::bench::CASES.iter().map(|c| c.id).chain([cyclestudio::bench::INCEPTION_CASE, cyclestudio::bench::LOOP_CASE]) {
        assert!(help.contains(case), "bench --help does not list {case}:\n{help}");
    }
}

#[test]
fn a_new_run_loads_to_size_286_over_256() {
    // `--load-size`'s stated default, at two sizes.
    for size in [256, 128] {
        let cfg = RunRequest { name: "r".into(), dataset: Some(demo()), size: Some(size), length: Length::Iters { iters: 1, decay_iters: 1 }, ..Default::default() }
            .new_run()
            .unwrap();
        assert_eq!(cfg.load_size, size * 286 / 256);
    }
}
