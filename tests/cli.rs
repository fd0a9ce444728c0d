//! End-to-end tests of the command line, as a user runs it.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cyclestudio(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cyclestudio")).current_dir(cwd).args(args).output().expect("binary runs")
}

fn ok(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "command failed: {text}");
    text
}

/// A tiny trained model at <dir>/checkpoints/tiny, made with the train command.
fn tiny_model(dir: &Path) -> PathBuf {
    tiny_model_trained(dir, 2)
}

fn tiny_model_trained(dir: &Path, iters: u64) -> PathBuf {
    let iters = iters.to_string();
    let ds = tiny_dataset(dir);
    let out = cyclestudio(
        dir,
        &[
            "train", "--dataset", ds.to_str().unwrap(), "--name", "tiny", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4",
            "--size", "32", "--iters", &iters, "--quiet",
        ],
    );
    let text = ok(&out);
    assert!(text.contains(&format!("finished tiny at step {iters}")), "{text}");
    dir.join("checkpoints/tiny")
}

fn dims(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap()
}

#[test]
fn translate_keeps_size_mode_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model(d);
    // Odd-sized colour image → grey, and back.
    let rgb = d.join("photo.jpg");
    image::DynamicImage::ImageRgb8(gradient_image(333, 217, 5)).save(&rgb).unwrap();
    let before = std::fs::read(&rgb).unwrap();
    let text = ok(&cyclestudio(d, &["translate", "photo.jpg", "--to", "gray"]));
    assert!(text.contains("using model"), "{text}");
    let out = d.join("photo.gray.png");
    assert_eq!(dims(&out), (333, 217));
    assert_eq!(image::open(&out).unwrap().color(), image::ColorType::L8);
    assert_eq!(std::fs::read(&rgb).unwrap(), before, "input unchanged");

    // Refuses to overwrite an output, then does with --overwrite.
    let again = cyclestudio(d, &["translate", "photo.jpg", "--to", "gray"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    ok(&cyclestudio(d, &["translate", "photo.jpg", "--to", "gray", "--overwrite"]));

    // A grey image to colour, and an RGBA image keeps its alpha.
    let grey = d.join("grey.png");
    image::DynamicImage::ImageRgb8(gradient_image(41, 19, 1)).to_luma8().save(&grey).unwrap();
    ok(&cyclestudio(d, &["translate", "grey.png", "--to", "color", "-o", "grey_colour.png"]));
    assert_eq!(dims(&d.join("grey_colour.png")), (41, 19));
    let rgba = d.join("rgba.png");
    let mut img = image::DynamicImage::ImageRgb8(gradient_image(50, 30, 2)).to_rgba8();
    img.get_pixel_mut(3, 4).0[3] = 17;
    img.save(&rgba).unwrap();
    ok(&cyclestudio(d, &["translate", "rgba.png", "--to", "color"]));
    let out = image::open(d.join("rgba.color.png")).unwrap().to_rgba8();
    assert_eq!(out.dimensions(), (50, 30));
    assert_eq!(out.get_pixel(3, 4).0[3], 17);
    // A 1×1 image and a tiled translation work too.
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10])).save(d.join("dot.png")).unwrap();
    ok(&cyclestudio(d, &["translate", "dot.png", "--to", "gray"]));
    assert_eq!(dims(&d.join("dot.gray.png")), (1, 1));
    ok(&cyclestudio(d, &["translate", "photo.jpg", "--to", "gray", "--tile", "64", "-o", "tiled.png"]));
    assert_eq!(dims(&d.join("tiled.png")), (333, 217));

    // A colour gain needs a model that predicts chroma over the input's luma.
    let direct = cyclestudio(d, &["translate", "photo.jpg", "--to", "color", "--chroma-gain", "0.5", "-o", "muted.png"]);
    assert!(!direct.status.success() && String::from_utf8_lossy(&direct.stderr).contains("--keep-luma"));
    let direct = cyclestudio(d, &["translate", "photo.jpg", "--to", "color", "--raw-chroma", "-o", "raw.png"]);
    assert!(!direct.status.success() && String::from_utf8_lossy(&direct.stderr).contains("--raw-chroma needs a model trained with --keep-luma"));
    // Unknown domains list the known ones.
    let bad = cyclestudio(d, &["translate", "photo.jpg", "--to", "zebra"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("gray, color") || String::from_utf8_lossy(&bad.stderr).contains("color, gray"));
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn convert_walks_folders_skips_broken_files_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model(d);
    let input = d.join("in");
    write_pngs(&input, 2, 64, 48);
    write_pngs(&input.join("sub/deeper"), 2, 37, 29);
    std::fs::write(input.join("broken.png"), "not an image").unwrap();
    std::fs::write(input.join("readme.txt"), "notes").unwrap();
    let before = snapshot(&input);

    let first = cyclestudio(d, &["convert", "in", "--to", "color", "-o", "in/out", "--model", "checkpoints/tiny"]);
    let text = format!("{}{}", String::from_utf8_lossy(&first.stdout), String::from_utf8_lossy(&first.stderr));
    assert!(!first.status.success(), "a failed file makes the exit status non-zero: {text}");
    assert!(text.contains("converted 4") && text.contains("failed 1") && text.contains("broken.png"), "{text}");
    assert!(input.join("out/img0.png").exists());
    assert_eq!(dims(&input.join("out/sub/deeper/img1.png")), (37, 29));

    // Re-running skips what is done and does not read its own outputs as inputs.
    let second = cyclestudio(d, &["convert", "in", "--to", "color", "-o", "in/out", "--model", "checkpoints/tiny"]);
    let text = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(text.contains("converted 0") && text.contains("skipped 4"), "{text}");
    let outputs = snapshot(&input.join("out"));
    assert_eq!(outputs.len(), 4);

    // Inputs are byte-identical afterwards (outputs aside).
    let after: Vec<_> = snapshot(&input).into_iter().filter(|(p, _)| !p.starts_with(input.join("out"))).collect();
    assert_eq!(after, before);
}

#[test]
fn import_reference_generator_and_translate_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pth = fixture_path("resnet_import.pth");
    let text = ok(&cyclestudio(d, &["import", "--name", "horse2zebra", "--g-ab", pth.to_str().unwrap(), "--domains", "horse,zebra"]));
    assert!(text.contains("resnet_2blocks"), "{text}");
    image::DynamicImage::ImageRgb8(gradient_image(36, 44, 3)).save(d.join("horse.png")).unwrap();
    ok(&cyclestudio(d, &["translate", "horse.png", "--to", "zebra", "--model", "checkpoints/horse2zebra"]));
    assert_eq!(dims(&d.join("horse.zebra.png")), (36, 44));
    // Only one direction was imported.
    let back = cyclestudio(d, &["translate", "horse.png", "--to", "horse", "--model", "checkpoints/horse2zebra"]);
    assert!(String::from_utf8_lossy(&back.stderr).contains("it knows: zebra"));
    // Export with the reference's keys.
    ok(&cyclestudio(d, &["export", "--model", "checkpoints/horse2zebra", "-o", "exported"]));
    let t = candle_core::safetensors::load(d.join("exported/G_A.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(t.contains_key("model.1.weight") && t.contains_key("model.11.conv_block.5.bias"));
    // A translate-only copy (generators + config) works on its own.
    ok(&cyclestudio(d, &["export", "--model", "checkpoints/horse2zebra", "--format", "generators", "-o", "shared_model"]));
    ok(&cyclestudio(d, &["translate", "horse.png", "--to", "zebra", "--model", "shared_model", "-o", "again.png"]));
    assert_eq!(std::fs::read(d.join("again.png")).unwrap(), std::fs::read(d.join("horse.zebra.png")).unwrap());
    // Not a generator: a clear error.
    let bad = cyclestudio(d, &["import", "--name", "x", "--g-ab", fixture_path("not_a_generator.pth").to_str().unwrap(), "--domains", "a,b"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a CycleGAN or CUT generator"));
}

#[test]
fn dataset_create_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pngs(&d.join("photos"), 12, 30, 20);
    std::fs::write(d.join("photos/broken.jpg"), "nope").unwrap();
    let text = ok(&cyclestudio(d, &["dataset", "create", "g2c", "--gray2color", "photos"]));
    assert!(text.contains("created") && text.contains("broken.jpg"), "{text}");
    let info = ok(&cyclestudio(d, &["dataset", "info", "datasets/g2c"]));
    assert!(info.contains("'gray' (1 channel)") && info.contains("'color' (3 channels)"), "{info}");
    ok(&cyclestudio(d, &["dataset", "create", "pp", "--domains", "photos", "photos", "--names", "photo,painting"]));
    assert!(ok(&cyclestudio(d, &["dataset", "info", "datasets/pp"])).contains("'painting'"));
    // An existing dataset is never overwritten.
    assert!(!cyclestudio(d, &["dataset", "create", "g2c", "--gray2color", "photos"]).status.success());
}

#[test]
fn eval_reports_model_and_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model(d);
    let truth = d.join("truth");
    let input = d.join("grey");
    std::fs::create_dir_all(&input).unwrap();
    for (i, p) in write_pngs(&truth, 3, 48, 40).iter().enumerate() {
        image::open(p).unwrap().to_luma8().save(input.join(format!("img{i}.png"))).unwrap();
    }
    let text = ok(&cyclestudio(d, &["eval", "--model", "checkpoints/tiny", "--to", "color", "--input", "grey", "--truth", "truth", "--json", "r.json"]));
    assert!(text.contains("| model |") && text.contains("| baseline"), "{text}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(r["images"], 3);
    assert!(r["baseline_psnr"].as_f64().unwrap() > 5.0 && r["psnr"].as_f64().unwrap().is_finite());

    // `cyclestudio eval … | head`: a reader that closes the pipe before the report. The report is
    // dropped, the JSON still written, and nothing panics (it did: "failed printing to stdout").
    std::fs::remove_file(d.join("r.json")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyclestudio"))
        .current_dir(d)
        .args(["eval", "--model", "checkpoints/tiny", "--to", "color", "--input", "grey", "--truth", "truth", "--json", "r.json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !said.contains("panicked"), "eval with its stdout closed: {:?}\n{said}", out.status);
    assert!(d.join("r.json").exists(), "{said}");
}

#[test]
fn score_ranks_planted_outliers_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Long enough for the cycle to learn the training images' kind (smooth gradients).
    tiny_model_trained(d, 150);
    let pool = d.join("pool");
    write_pngs(&pool, 6, 48, 40);
    // Noise images do not belong to either domain: their cycle cannot reproduce them.
    let mut state = 12345u32;
    for k in 0..2 {
        let img = image::RgbImage::from_fn(48, 40, |_, _| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = (state >> 16) as u8;
            image::Rgb([v, v.wrapping_mul(3), v.wrapping_add(99)])
        });
        img.save(pool.join(format!("noise{k}.png"))).unwrap();
    }
    let text = ok(&cyclestudio(d, &["score", "pool", "--model", "checkpoints/tiny", "--domain", "color", "--top", "2", "--csv", "s.csv"]));
    let csv = std::fs::read_to_string(d.join("s.csv")).unwrap();
    let top: Vec<&str> = csv.lines().skip(1).take(2).collect();
    assert!(top.iter().all(|l| l.contains("noise")), "{csv}\n{text}");
    assert_eq!(csv.lines().count(), 9);
}

/// ITU-R 601 luma of every pixel, in 8-bit levels (what a grey-domain model sees of a colour image).
fn luma601(img: &image::RgbImage) -> Vec<f32> {
    img.pixels().map(|p| p.0.map(f32::from)).map(|[r, g, b]| 0.299 * r + 0.587 * g + 0.114 * b).collect()
}

/// Max |luma of the image at `colour` − `luma`| over the pixels, in 8-bit levels.
fn max_luma_error(colour: &Path, luma: &[f32]) -> f32 {
    let out = luma601(&image::open(colour).unwrap().to_rgb8());
    assert_eq!(out.len(), luma.len());
    out.iter().zip(luma).map(|(o, l)| (o - l).abs()).fold(0.0, f32::max)
}

#[test]
fn keep_luma_model_translates_converts_evaluates_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let text = ok(&cyclestudio(
        d,
        &[
            "train", "--dataset", ds.to_str().unwrap(), "--name", "luma", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4",
            "--size", "32", "--iters", "2", "--keep-luma", "--quiet",
        ],
    ));
    assert!(text.contains("finished luma at step 2"), "{text}");
    assert!(std::fs::read_to_string(d.join("checkpoints/luma/config.toml")).unwrap().contains("keep_luma = true"));
    // Resume rebuilds the chroma generator from the saved config; a run without it cannot gain it.
    let text = ok(&cyclestudio(d, &["train", "--name", "luma", "--resume", "--iters", "3", "--quiet"]));
    assert!(text.contains("finished luma at step 3"), "{text}");
    let ds = ds.to_str().unwrap();
    ok(&cyclestudio(d, &["train", "--dataset", ds, "--name", "plain", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "1", "--quiet"]));
    let refused = cyclestudio(d, &["train", "--name", "plain", "--resume", "--iters", "2", "--keep-luma"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("without --keep-luma"));

    // Translating a colour photo: its luma enters the model and comes out unchanged (each
    // channel rounded to 8 bits moves it by at most half a level).
    let photo = gradient_image(150, 70, 9);
    photo.save(d.join("photo.png")).unwrap();
    let luma = luma601(&photo);
    ok(&cyclestudio(d, &["translate", "photo.png", "--to", "color", "--model", "checkpoints/luma"]));
    assert!(max_luma_error(&d.join("photo.color.png"), &luma) <= 0.51);
    // Tiles are blended linearly, which keeps the luma too.
    ok(&cyclestudio(d, &["translate", "photo.png", "--to", "color", "--model", "checkpoints/luma", "--tile", "16", "-o", "tiled.png"]));
    assert!(max_luma_error(&d.join("tiled.png"), &luma) <= 0.51);
    // --raw-chroma skips the low-pass of the predicted colour: other colours, the same luma.
    ok(&cyclestudio(d, &["translate", "photo.png", "--to", "color", "--model", "checkpoints/luma", "--raw-chroma", "-o", "raw.png"]));
    assert!(max_luma_error(&d.join("raw.png"), &luma) <= 0.51);
    assert_ne!(image::open(d.join("raw.png")).unwrap().into_rgb8(), image::open(d.join("photo.color.png")).unwrap().into_rgb8());

    let input = d.join("grey");
    std::fs::create_dir_all(&input).unwrap();
    let grey = image::GrayImage::from_fn(150, 70, |x, y| image::Luma([luma[(y * 150 + x) as usize].round() as u8]));
    grey.save(input.join("photo.png")).unwrap();
    let grey_levels: Vec<f32> = grey.pixels().map(|p| f32::from(p.0[0])).collect();
    ok(&cyclestudio(d, &["convert", "grey", "--to", "color", "-o", "out", "--model", "checkpoints/luma"]));
    assert!(max_luma_error(&d.join("out/photo.png"), &grey_levels) <= 0.51);
    let truth = d.join("truth");
    write_pngs(&truth, 1, 150, 70);
    std::fs::rename(truth.join("img0.png"), truth.join("photo.png")).unwrap();
    let text = ok(&cyclestudio(d, &["eval", "--model", "checkpoints/luma", "--to", "color", "--input", "grey", "--truth", "truth"]));
    assert!(text.contains("| model |"), "{text}");

    // The reference has no chroma-over-luma generator; the translate-only copy keeps the mode.
    let refused = cyclestudio(d, &["export", "--model", "checkpoints/luma", "--format", "torch-keys", "-o", "torch"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--keep-luma") && stderr.contains("--format generators"), "{stderr}");
    assert!(!d.join("torch").exists());
    ok(&cyclestudio(d, &["export", "--model", "checkpoints/luma", "--format", "generators", "--half", "-o", "shared"]));
    assert!(std::fs::read_to_string(d.join("shared/config.toml")).unwrap().contains("keep_luma = true"));
    ok(&cyclestudio(d, &["translate", "photo.png", "--to", "color", "--model", "shared", "-o", "shared.png"]));
    assert!(max_luma_error(&d.join("shared.png"), &luma) <= 0.51);
}

/// A fresh clone colours a grey photo with the shipped default model, keeping its brightness.
#[test]
fn shipped_default_model_colours_a_grey_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let grey = image::DynamicImage::ImageRgb8(common::gradient_image(96, 64, 3)).into_luma8();
    let input = tmp.path().join("photo.png");
    grey.save(&input).unwrap();
    let output = tmp.path().join("photo.color.png");
    ok(&cyclestudio(repo, &["translate", input.to_str().unwrap(), "--to", "color", "-o", output.to_str().unwrap()]));
    let colour = image::open(&output).unwrap().into_rgb8();
    assert_eq!(colour.dimensions(), (96, 64));
    for (g, c) in grey.pixels().zip(colour.pixels()) {
        let luma = 0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32;
        assert!((luma - g[0] as f32).abs() <= 1.5, "luma {luma} vs grey {}", g[0]);
    }
    // --chroma-gain scales the predicted colour: 0 gives the grey photo back, 0.5 less colour.
    let spread = |p: &Path| -> u32 {
        image::open(p).unwrap().into_rgb8().pixels().map(|c| u32::from(c.0.iter().max().unwrap() - c.0.iter().min().unwrap())).sum()
    };
    for (gain, name) in [("0", "none.png"), ("0.5", "muted.png")] {
        let out = tmp.path().join(name);
        ok(&cyclestudio(repo, &["translate", input.to_str().unwrap(), "--to", "color", "--chroma-gain", gain, "-o", out.to_str().unwrap()]));
    }
    let none = image::open(tmp.path().join("none.png")).unwrap().into_rgb8();
    assert!(grey.pixels().zip(none.pixels()).all(|(g, c)| c.0.iter().all(|&v| v.abs_diff(g[0]) <= 1)));
    let (full, half) = (spread(&output), spread(&tmp.path().join("muted.png")));
    assert!(full > 0 && half < full, "colour spread {half} at gain 0.5 vs {full} at 1");
}

#[test]
fn built_in_model_translates_from_any_folder() {
    // No checkpoints folder here: the grey→colour model inside the binary is used.
    let tmp = tempfile::tempdir().unwrap();
    let grey = image::DynamicImage::ImageRgb8(common::gradient_image(96, 64, 5)).into_luma8();
    grey.save(tmp.path().join("photo.png")).unwrap();
    let text = ok(&cyclestudio(tmp.path(), &["translate", "photo.png", "--to", "color"]));
    assert!(text.contains("built-in"), "{text}");
    // The same as the repository's checkpoints/default gives.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tmp.path().join("repo.png");
    ok(&cyclestudio(repo, &["translate", tmp.path().join("photo.png").to_str().unwrap(), "--to", "color", "-o", out.to_str().unwrap()]));
    assert_eq!(std::fs::read(tmp.path().join("photo.color.png")).unwrap(), std::fs::read(&out).unwrap());
    // It has one direction; asking for the other names what it knows.
    let back = cyclestudio(tmp.path(), &["translate", "photo.color.png", "--to", "gray"]);
    assert!(!back.status.success() && String::from_utf8_lossy(&back.stderr).contains("it knows: color"));
    // convert and eval use it too.
    std::fs::create_dir_all(tmp.path().join("in")).unwrap();
    grey.save(tmp.path().join("in/a.png")).unwrap();
    ok(&cyclestudio(tmp.path(), &["convert", "in", "--to", "color", "-o", "out"]));
    assert!(tmp.path().join("out/a.png").is_file());
    image::DynamicImage::ImageRgb8(common::gradient_image(96, 64, 5)).save(tmp.path().join("truth.png")).unwrap();
    std::fs::create_dir_all(tmp.path().join("truth")).unwrap();
    std::fs::rename(tmp.path().join("truth.png"), tmp.path().join("truth/a.png")).unwrap();
    ok(&cyclestudio(tmp.path(), &["eval", "--to", "color", "--input", "in", "--truth", "truth"]));
}

#[test]
fn sharded_conversion_by_three_processes_covers_the_tree_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let mut all = Vec::new();
    for sub in ["", "x", "x/y", "z"] {
        for p in write_pngs(&d.join("tree").join(sub), 4, 24, 20) {
            all.push(p.strip_prefix(d.join("tree")).unwrap().with_extension("png"));
        }
    }
    let children: Vec<_> = (1..=3)
        .map(|k| {
            Command::new(env!("CARGO_BIN_EXE_cyclestudio"))
                .current_dir(d)
                .args(["convert", "tree", "--to", "color", "-o", "out", "--model", model.to_str().unwrap(), "--shard", &format!("{k}/3")])
                .output()
        })
        .collect();
    let mut converted = 0;
    for out in children {
        let text = ok(&out.unwrap());
        let n: usize = text.split("converted ").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.trim().parse().ok()).expect(&text);
        assert!(text.contains("shard "), "{text}");
        converted += n;
    }
    assert_eq!(converted, all.len(), "every image converted exactly once over the shards");
    for rel in &all {
        assert!(d.join("out").join(rel).is_file(), "{} missing", rel.display());
    }
    // The split depends only on the relative paths: the same shard again has nothing to do.
    let again = ok(&cyclestudio(d, &["convert", "tree", "--to", "color", "-o", "out", "--model", model.to_str().unwrap(), "--shard", "2/3"]));
    assert!(again.contains("converted 0"), "{again}");
    let bad = cyclestudio(d, &["convert", "tree", "--to", "color", "-o", "out", "--shard", "0/3"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1 ≤ K ≤ N"));
}

/// Without `--model`, translate and convert use a model that knows the asked domain and say
/// which: an unrelated run in `checkpoints/` (an imported horse→zebra model) does not hide the
/// built-in grey→colour model, and asking for its domain picks it.
#[test]
fn without_model_the_model_that_knows_the_domain_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pth = fixture_path("resnet_import.pth");
    ok(&cyclestudio(d, &["import", "--name", "horse2zebra", "--g-ab", pth.to_str().unwrap(), "--domains", "horse,zebra"]));
    write_pngs(&d.join("in"), 1, 40, 32);
    let colour = cyclestudio(d, &["translate", "in/img0.png", "--to", "color", "-o", "c.png"]);
    let said = format!("{}{}", ok(&colour), String::from_utf8_lossy(&colour.stderr));
    assert!(said.contains("using model the built-in grey→colour model"), "{said}");
    let zebra = cyclestudio(d, &["convert", "in", "--to", "zebra", "-o", "z"]);
    let said = format!("{}{}", ok(&zebra), String::from_utf8_lossy(&zebra.stderr));
    assert!(said.contains("horse2zebra"), "{said}");
    let unknown = cyclestudio(d, &["translate", "in/img0.png", "--to", "monet"]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("it knows"), "{}", String::from_utf8_lossy(&unknown.stderr));
}

/// SIGTERM during `convert` finishes the images in hand and stops: exit 0, every output written is
/// a whole PNG, the summary says how many are left, and running the command again converts
/// exactly those.
#[test]
fn sigterm_stops_a_conversion_cleanly_and_a_rerun_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inputs = write_pngs(&d.join("in"), 40, 320, 240);
    let child = Command::new(env!("CARGO_BIN_EXE_cyclestudio"))
        .current_dir(d)
        .args(["convert", "in", "--to", "color", "-o", "out", "--batch", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::read_dir(d.join("out")).map_or(true, |mut r| r.next().is_none()) {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "no output appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    let written: Vec<_> = std::fs::read_dir(d.join("out")).unwrap().map(|e| e.unwrap().path()).collect();
    for p in &written {
        image::open(p).unwrap_or_else(|e| panic!("{} is not a whole PNG: {e}", p.display()));
    }
    let left = inputs.len() - written.len();
    assert!(left > 0, "the conversion finished before the signal: {said}");
    assert!(said.contains(&format!("stopped with {left} image(s) left")), "{said}");
    let again = ok(&cyclestudio(d, &["convert", "in", "--to", "color", "-o", "out"]));
    assert!(again.contains(&format!("converted {left}, skipped {}", written.len())), "{again}");
}

/// `--shard auto` in a Slurm job array (here 10-14:2, as `sbatch --array=10-14:2` sets the
/// variables) and `auto/N` in a Kubernetes Indexed Job convert the tree once between them;
/// outside both it is a clear error.
#[test]
fn auto_shards_from_slurm_and_kubernetes_cover_the_tree_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let all = write_pngs(&d.join("tree"), 9, 24, 20);
    let convert = |out: &str, shard: &str, env: Vec<(String, String)>| {
        Command::new(env!("CARGO_BIN_EXE_cyclestudio"))
            .current_dir(d)
            .args(["convert", "tree", "--to", "color", "-o", out, "--model", model.to_str().unwrap(), "--shard", shard])
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .envs(env)
            .output()
            .unwrap()
    };
    let count = |text: &str| -> usize { text.split("converted ").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.trim().parse().ok()).expect(text) };
    let slurm = |id: u32| {
        [("ID", id), ("MIN", 10), ("MAX", 14), ("STEP", 2), ("COUNT", 3)].map(|(k, v)| (format!("SLURM_ARRAY_TASK_{k}"), v.to_string())).to_vec()
    };
    let mut total = 0;
    for (id, part) in [(10, "1/3"), (12, "2/3"), (14, "3/3")] {
        let text = ok(&convert("slurm", "auto", slurm(id)));
        assert!(text.contains(&format!("part {part}")), "{text}");
        total += count(&text);
    }
    assert_eq!(total, all.len(), "Slurm array: every image converted exactly once");
    let mut total = 0;
    for index in 0..2 {
        total += count(&ok(&convert("k8s", "auto/2", vec![("JOB_COMPLETION_INDEX".into(), index.to_string())])));
    }
    assert_eq!(total, all.len(), "Indexed Job: every image converted exactly once");
    let outside = convert("none", "auto", vec![]);
    assert!(!outside.status.success() && String::from_utf8_lossy(&outside.stderr).contains("not in a Slurm job array"));
}

#[test]
fn a_second_trainer_of_a_run_stops_at_once_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let mut first = Command::new(env!("CARGO_BIN_EXE_cyclestudio"))
        .current_dir(d)
        .args([
            "train", "--dataset", ds.to_str().unwrap(), "--name", "tiny", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4",
            "--size", "32", "--iters", "100000", "--save-every", "2", "--quiet",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let manifest = d.join("checkpoints/tiny/latest/manifest.toml");
    let started = std::time::Instant::now();
    while !manifest.exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let result = std::panic::catch_unwind(|| {
        assert!(manifest.exists(), "the first trainer saved no checkpoint");
        let second = cyclestudio(d, &["train", "--name", "tiny", "--resume", "--iters", "3", "--quiet"]);
        let err = String::from_utf8_lossy(&second.stderr).to_string();
        assert!(!second.status.success(), "{err}");
        assert!(err.contains("being trained by another process") && err.contains(&format!("PID {}", first.id())), "{err}");
        // Translating from the run being trained works.
        image::DynamicImage::ImageRgb8(gradient_image(40, 36, 1)).into_luma8().save(d.join("g.png")).unwrap();
        ok(&cyclestudio(d, &["translate", "g.png", "--to", "color", "--model", "checkpoints/tiny"]));
    });
    // kill -9 leaves no stale lock: the run can be resumed right after.
    first.kill().unwrap();
    first.wait().unwrap();
    result.unwrap();
    let resumed = ok(&cyclestudio(d, &["train", "--name", "tiny", "--resume", "--iters", "3", "--quiet"]));
    assert!(resumed.contains("tiny at step"), "{resumed}");
}

#[test]
fn colour_classes_model_trains_translates_at_a_temperature_and_keeps_luma() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train", "--dataset", ds.to_str().unwrap(), "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--size", "32",
            "--iters", "3", "--paired", "--keep-luma", "--lambda-gan", "0", "--quiet",
        ];
        args.extend_from_slice(extra);
        cyclestudio(d, &args)
    };
    let text = ok(&train(&["--name", "classes", "--paired-loss", "classify"]));
    assert!(text.contains("finished classes at step 3"), "{text}");
    assert!(std::fs::read_to_string(d.join("checkpoints/classes/config.toml")).unwrap().contains("paired_loss = \"classify\""));
    // Without --keep-luma it is refused clearly.
    let bad = cyclestudio(d, &["train", "--dataset", ds.to_str().unwrap(), "--name", "bad", "--paired", "--paired-loss", "classify", "--iters", "1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs --paired and --keep-luma"));
    let grey = image::DynamicImage::ImageRgb8(gradient_image(40, 36, 9)).into_luma8();
    grey.save(d.join("g.png")).unwrap();
    let luma = grey.pixels().map(|p| p[0] as f32).collect::<Vec<_>>();
    for t in ["0.2", "1"] {
        let out = d.join(format!("t{t}.png"));
        ok(&cyclestudio(d, &["translate", "g.png", "--to", "color", "--model", "checkpoints/classes", "--temperature", t, "-o", out.to_str().unwrap()]));
        assert!(max_luma_error(&out, &luma) <= 1.5, "temperature {t}");
    }
    // A model without colour classes refuses a temperature.
    ok(&train(&["--name", "direct"]));
    let refused = cyclestudio(d, &["translate", "g.png", "--to", "color", "--model", "checkpoints/direct", "--temperature", "0.5", "-o", "x.png"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--temperature needs a model trained with --paired-loss classify"));
    // eval reports colourfulness beside PSNR/SSIM.
    let report = ok(&cyclestudio(d, &["eval", "--model", "checkpoints/classes", "--to", "color", "--input", ds.join("testA").to_str().unwrap(), "--truth", ds.join("testB").to_str().unwrap()]));
    assert!(report.contains("colourfulness") && report.contains("× the truth's"), "{report}");
}

/// Where the kernel gives huge pages only to memory advised for them, the program runs with
/// glibc's malloc advising its heap (the bench says so), unless GLIBC_TUNABLES has chosen.
#[test]
fn the_heap_takes_transparent_huge_pages_where_the_kernel_wants_advice() {
    let note = "heap in transparent huge pages";
    let bench = |tunables: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cyclestudio"));
        cmd.args(["bench", "--cases", "infer256", "--warmup", "0", "--repeats", "1"]);
        match tunables {
            Some(t) => cmd.env("GLIBC_TUNABLES", t),
            None => cmd.env_remove("GLIBC_TUNABLES"),
        };
        ok(&cmd.output().expect("binary runs"))
    };
    let off = bench(Some("glibc.malloc.hugetlb=0"));
    assert!(!off.contains(note), "{off}");
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let default = bench(None);
    if cfg!(all(target_os = "linux", target_env = "gnu")) && thp.contains("[madvise]") {
        assert!(default.contains(note), "{default}");
    } else {
        eprintln!("skipped the huge-page half: transparent huge pages are {:?} here (not madvise), or this is not glibc", thp.trim());
        assert!(!default.contains(note), "{default}");
    }
}
