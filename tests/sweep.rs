//! `cyclestudio sweep` end to end on the demo data: 6 trials with successive halving, two at a
//! time, ranked in a complete and sorted leaderboard whose best scores are what `eval` gives that
//! run; a survivor of the rungs ends exactly where an uninterrupted run does; a second call trains
//! nothing; two shards merge into one leaderboard; bad definitions are refused with a reason.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cyclestudio(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cyclestudio")).current_dir(cwd).args(args).output().expect("binary runs")
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "failed:\n{text}");
    text
}

fn demo() -> String {
    repo().join("datasets/demo").to_str().unwrap().to_string()
}

/// Tiny trials: 6 + 2 iterations at 32², so rungs fall on steps 2 and 4.
const TRAIN_FLAGS: [&str; 10] = ["--generator", "resnet_6blocks", "--ndf", "8", "--size", "32", "--iters", "6", "--decay-iters", "2"];

fn sweep_args<'a>(demo: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["sweep", "--dataset", demo, "--name", name, "--vary", "lr=0.0002,0.001", "--vary", "ngf=4,8,12"];
    args.extend(extra);
    args.push("--");
    args.extend(TRAIN_FLAGS);
    args
}

/// The leaderboard's rows as fields, after checking its header.
fn leaderboard(cwd: &Path, name: &str) -> (String, Vec<Vec<String>>) {
    let csv = std::fs::read_to_string(cwd.join("checkpoints").join(name).join("leaderboard.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("rank,trial,run,lr,ngf,step,status,psnr,ssim,colourfulness,seconds"));
    let rows = lines.map(|l| l.split(',').map(str::to_string).collect()).collect();
    (csv, rows)
}

#[test]
fn a_halving_sweep_ranks_its_trials_like_eval_and_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let demo = demo();
    let out = ok(cyclestudio(cwd, &sweep_args(&demo, "s", &["--halving", "--jobs", "2"])));
    assert!(out.contains("best by psnr: t"), "{out}");

    let (csv, rows) = leaderboard(cwd, "s");
    assert_eq!(rows.len(), 6, "{csv}");
    let mut trials: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    trials.sort();
    assert_eq!(trials, ["t01", "t02", "t03", "t04", "t05", "t06"]);
    assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["1", "2", "3", "4", "5", "6"]);
    // Halving 6 → 3 → 2: two finish, one stops at rung 2 (step 4), three at rung 1 (step 2).
    let status: Vec<(&str, &str)> = rows.iter().map(|r| (r[5].as_str(), r[6].as_str())).collect();
    assert_eq!(status, [("8", "finished"), ("8", "finished"), ("4", "stopped at rung 2"), ("2", "stopped at rung 1"), ("2", "stopped at rung 1"), ("2", "stopped at rung 1")], "{csv}");
    for group in [&rows[0..2], &rows[3..6]] {
        let psnr: Vec<f64> = group.iter().map(|r| r[7].parse().unwrap()).collect();
        assert!(psnr.windows(2).all(|w| w[0] >= w[1]), "not best first within a rung: {psnr:?}");
    }
    // Trial 5 is the fifth combination: the second lr with the second ngf.
    let t05 = rows.iter().find(|r| r[1] == "t05").unwrap();
    assert_eq!((t05[3].as_str(), t05[4].as_str()), ("0.001", "8"));
    assert!(std::fs::read_to_string(cwd.join("checkpoints/s/leaderboard.md")).unwrap().contains("| 1 | "));

    // The best row's scores are what `eval` gives its run on the same held-out pairs.
    let best = &rows[0];
    let json = cwd.join("eval.json");
    ok(cyclestudio(cwd, &["eval", "--model", &best[2], "--to", "color", "--input", &format!("{demo}/testA"), "--truth", &format!("{demo}/testB"), "--short-side", "32", "--json", json.to_str().unwrap()]));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for (col, key) in [(7, "psnr"), (8, "ssim"), (9, "colourfulness")] {
        let want = eval[key].as_f64().unwrap();
        let got: f64 = best[col].parse().unwrap();
        assert!((got - want).abs() < 1e-4, "{key}: leaderboard {got}, eval {want}");
    }

    // A survivor was stopped and resumed at each rung: its weights are those of one uninterrupted run.
    let lr = best[3].clone();
    let ngf = best[4].clone();
    let mut straight = vec!["train", "--dataset", &demo, "--name", "straight", "--lr", &lr, "--ngf", &ngf, "--quiet"];
    straight.extend(TRAIN_FLAGS);
    ok(cyclestudio(cwd, &straight));
    let load = |run: &str| cyclestudio::checkpoint::load_generation(&cwd.join(run)).unwrap();
    common::assert_same_checkpoint(&load(&best[2]), &load("checkpoints/straight"), "halving survivor vs uninterrupted run");

    // Again: nothing is trained, the table is the same; --leaderboard rebuilds it.
    let out = ok(cyclestudio(cwd, &sweep_args(&demo, "s", &["--halving", "--jobs", "2"])));
    assert!(!out.contains("): finished at step") && !out.contains("): at rung"), "retrained:\n{out}");
    assert_eq!(leaderboard(cwd, "s").0, csv);
    std::fs::remove_file(cwd.join("checkpoints/s/leaderboard.csv")).unwrap();
    ok(cyclestudio(cwd, &["sweep", "--name", "s", "--leaderboard"]));
    assert_eq!(leaderboard(cwd, "s").0, csv);
}

#[test]
fn shards_of_a_sweep_merge_into_one_leaderboard() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let demo = demo();
    let first = ok(cyclestudio(cwd, &sweep_args(&demo, "p", &["--shard", "1/2"])));
    assert!(first.contains("part 1/2: 3 of 6 trials"), "{first}");
    let (_, rows) = leaderboard(cwd, "p");
    let mut trials: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    trials.sort();
    assert_eq!(trials, ["t01", "t03", "t05"], "shard 1/2 runs trials 1, 3, 5");
    ok(cyclestudio(cwd, &sweep_args(&demo, "p", &["--shard", "2/2"])));
    ok(cyclestudio(cwd, &["sweep", "--name", "p", "--leaderboard"]));
    let (csv, rows) = leaderboard(cwd, "p");
    assert_eq!(rows.len(), 6, "{csv}");
    assert!(rows.iter().all(|r| r[6] == "finished" && r[5] == "8"), "{csv}");
    let psnr: Vec<f64> = rows.iter().map(|r| r[7].parse().unwrap()).collect();
    assert!(psnr.windows(2).all(|w| w[0] >= w[1]), "{psnr:?}");
}

#[test]
fn bad_sweep_definitions_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let demo = demo();
    let err = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // A flag both varied and given; a value that is no fraction; no held-out pairs.
    let e = err(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "a", "--vary", "size=32,64", "--", "--size", "32"]));
    assert!(e.contains("both varied and given"), "{e}");
    let e = err(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "a", "--vary", "lr=1,2", "--halving", "--rungs", "0.5,2"]));
    assert!(e.contains("fractions"), "{e}");
    let bare = cwd.join("bare");
    for d in ["trainA", "trainB"] {
        std::fs::create_dir_all(bare.join(d)).unwrap();
    }
    let e = err(cyclestudio(cwd, &["sweep", "--dataset", bare.to_str().unwrap(), "--name", "b", "--vary", "lr=1,2"]));
    assert!(e.contains("held-out pairs"), "{e}");
    // Another grid under the name of an existing sweep.
    ok(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "c", "--vary", "lr=0.0002", "--", "--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "1", "--decay-iters", "0"]));
    let e = err(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "c", "--vary", "lr=0.0005"]));
    assert!(e.contains("was started with other settings"), "{e}");
    // A train flag that does not exist is named.
    let e = err(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "d", "--vary", "no-such-flag=1,2"]));
    assert!(e.contains("no-such-flag"), "{e}");
    assert!(!cwd.join("checkpoints/d").exists(), "a refused sweep left a folder behind");
    // A grid point that train refuses is named before anything trains.
    let e = err(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "e", "--vary", "size=96,128", "--", "--generator", "unet_128"]));
    assert!(e.contains("trial t01 (--size 96)") && e.contains("multiple of 128"), "{e}");
    assert!(!cwd.join("checkpoints/e").exists());
}

#[test]
fn a_sweep_ranks_by_fd_dinov2_lowest_first() {
    use cyclestudio::eval::fd_dinov2::{fd_dinov2, Dinov2Features};
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let demo = demo();
    // The parity fixture's tiny DINOv2 (random weights): the ranking, not the figures, is tested.
    let weights = common::fixture_path("dinov2_small_random.safetensors");
    let mut args = vec!["sweep", "--dataset", &demo, "--name", "fd", "--vary", "ngf=4,8", "--metric", "fd-dinov2", "--dinov2-weights", weights.to_str().unwrap(), "--"];
    args.extend(["--generator", "resnet_6blocks", "--ndf", "4", "--size", "32", "--iters", "2", "--decay-iters", "0"]);
    ok(cyclestudio(cwd, &args));
    let csv = std::fs::read_to_string(cwd.join("checkpoints/fd/leaderboard.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("rank,trial,run,ngf,step,status,psnr,ssim,colourfulness,fd_dinov2,seconds"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let fd: Vec<f64> = rows.iter().map(|r| r[9].parse().unwrap()).collect();
    assert!(fd.len() == 2 && fd[0] <= fd[1], "lowest distance first: {csv}");

    // The best row's distance is the library's, from its translations and the held-out B images.
    let model = Dinov2Features::load(&weights, &candle_core::Device::Cpu).unwrap();
    let run = cwd.join(rows[0][2]);
    let tr = cyclestudio::translate::Translator::load(&run, "cpu").unwrap();
    let (translations, _) = cyclestudio::eval::translate_folder(&tr, "color", Path::new(&format!("{demo}/testA")), 32, &mut |_, _| {}).unwrap();
    let real: Vec<_> = cyclestudio::eval::images_under(Path::new(&format!("{demo}/testB")))
        .unwrap()
        .iter()
        .map(|p| cyclestudio::eval::resize_short(&cyclestudio::data::decode_image(p).unwrap(), 32))
        .collect();
    let want = fd_dinov2(&model.features_of_images(&translations).unwrap(), &model.features_of_images(&real).unwrap()).unwrap();
    assert!((fd[0] - want).abs() <= 1e-4 * want.abs().max(1.0), "leaderboard {} vs {want}", fd[0]);

    let e = cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "fd2", "--vary", "ngf=4,8", "--metric", "fd-dinov2"]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("--dinov2-weights"));
}

#[test]
fn a_diverging_trial_is_marked_and_ranked_last() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let demo = demo();
    let out = ok(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "d", "--vary", "lr=1e30,0.0002", "--", "--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "3", "--decay-iters", "0"]));
    assert!(out.contains("t01 (--lr 1e30): diverged"), "{out}");
    let csv = std::fs::read_to_string(cwd.join("checkpoints/d/leaderboard.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().map(|r| (r[1], r[5])).collect::<Vec<_>>(), [("t02", "finished"), ("t01", "diverged")], "{csv}");
    // Running again does not retry a diverged trial.
    let out = ok(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "d", "--vary", "lr=1e30,0.0002", "--", "--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "3", "--decay-iters", "0"]));
    assert!(!out.contains("): diverged"), "{out}");
}

#[test]
fn a_sweep_ranks_by_kid_lowest_first_with_fid_beside() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let demo = demo();
    // The FID network with synthetic weights (the real ones are a 95 MB download).
    let weights = cwd.join("synthetic_inception.safetensors");
    let named = cyclestudio::eval::inception::synthetic_weights().unwrap();
    std::fs::write(&weights, cyclestudio::checkpoint::safetensors_bytes(&named).unwrap()).unwrap();
    let mut args = vec!["sweep", "--dataset", &demo, "--name", "k", "--vary", "ngf=4,8", "--metric", "kid", "--fid-weights", weights.to_str().unwrap(), "--fid-weights-unchecked", "--"];
    args.extend(["--generator", "resnet_6blocks", "--ndf", "4", "--size", "32", "--iters", "2", "--decay-iters", "0"]);
    ok(cyclestudio(cwd, &args));
    let csv = std::fs::read_to_string(cwd.join("checkpoints/k/leaderboard.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("rank,trial,run,ngf,step,status,psnr,ssim,colourfulness,kid,fid,seconds"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let kid: Vec<f64> = rows.iter().map(|r| r[9].parse().unwrap()).collect();
    let fid: Vec<f64> = rows.iter().map(|r| r[10].parse().unwrap()).collect();
    assert!(kid.len() == 2 && kid[0] <= kid[1] && fid.iter().all(|f| f.is_finite() && *f >= 0.0), "{csv}");
    let e = cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "k2", "--vary", "ngf=4,8", "--metric", "fid"]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("--fid-weights"));

    // Held-out images without true pairs: the distances alone score the trials.
    let unpaired = cwd.join("unpaired_a");
    std::fs::create_dir_all(&unpaired).unwrap();
    for (i, e) in std::fs::read_dir(format!("{demo}/testA")).unwrap().enumerate() {
        std::fs::copy(e.unwrap().path(), unpaired.join(format!("other{i}.png"))).unwrap();
    }
    let mut args = vec!["sweep", "--dataset", &demo, "--name", "u", "--vary", "ngf=4,8", "--metric", "fid", "--val-a", unpaired.to_str().unwrap()];
    args.extend(["--fid-weights", weights.to_str().unwrap(), "--fid-weights-unchecked", "--", "--generator", "resnet_6blocks", "--ndf", "4", "--size", "32", "--iters", "1", "--decay-iters", "0"]);
    ok(cyclestudio(cwd, &args));
    let csv = std::fs::read_to_string(cwd.join("checkpoints/u/leaderboard.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert!(rows.len() == 2 && rows.iter().all(|r| r[6].is_empty() && r[10].parse::<f64>().is_ok()), "no PSNR without pairs, FID always:\n{csv}");
}

#[test]
fn trials_of_different_sizes_are_scored_at_one_size() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let demo = demo();
    ok(cyclestudio(cwd, &["sweep", "--dataset", &demo, "--name", "z", "--vary", "size=32,64", "--", "--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--iters", "1", "--decay-iters", "0"]));
    let spec = cyclestudio::sweep::SweepSpec::load(&cwd.join("checkpoints/z")).unwrap();
    assert_eq!(spec.short_side, Some(64), "the largest size");
    // The 32² trial's score is eval's at 64.
    let json = cwd.join("eval.json");
    ok(cyclestudio(cwd, &["eval", "--model", "checkpoints/z/t01", "--to", "color", "--input", &format!("{demo}/testA"), "--truth", &format!("{demo}/testB"), "--short-side", "64", "--json", json.to_str().unwrap()]));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(cwd.join("checkpoints/z/t01/trial.json")).unwrap()).unwrap();
    assert!((record["scores"]["psnr"].as_f64().unwrap() - eval["psnr"].as_f64().unwrap()).abs() < 1e-9);
}
