//! The CLI's model commands: translate, convert, import, export, eval and score.

use super::{ColourArgs, ConvertArgs, EvalArgs, ExportArgs, ExportFormat, ImportArgs, LayoutArgs, ScoreArgs, TranslateArgs};
use crate::interop::{export_torch_keys, import as import_model, ImportRequest};
use crate::translate::{convert_folder, default_output_path, ConvertOptions, ModelSource, TileProgress, TranslateOptions, Translator};
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

/// `--model`, or without it the model that can translate to `to` (see `ModelSource::default_for`),
/// said on stderr.
fn resolve_model(checkpoints: &Path, model: Option<PathBuf>, to: Option<&str>) -> ModelSource {
    match model {
        Some(m) => ModelSource::Dir(m),
        None => {
            let m = match to {
                Some(to) => ModelSource::default_for(checkpoints, to),
                None => ModelSource::default_in(checkpoints),
            };
            eprintln!("using model {m}");
            m
        }
    }
}

/// The model at `model` on `device`, laid out and coloured as `layout` and `colour` say.
fn load_translator(model: &ModelSource, device: &str, layout: LayoutArgs, colour: ColourArgs) -> Result<Translator> {
    load_translator_generation(model, device, layout, colour, crate::checkpoint::LATEST)
}

/// `load_translator` for a named generation of a run (`latest` or `best`).
fn load_translator_generation(model: &ModelSource, device: &str, layout: LayoutArgs, colour: ColourArgs, generation: &str) -> Result<Translator> {
    let mut tr = match (model, generation) {
        (_, crate::checkpoint::LATEST) => Translator::open(model, device)?,
        (ModelSource::Dir(d), which) => Translator::load_generation(d, device, which)?,
        (ModelSource::BuiltIn, which) => bail!("the built-in model has only one generation; --generation {which} needs --model DIR"),
    };
    tr.options = translate_options(layout);
    let (precision, note) = crate::ops::precision::effective(layout.precision, &tr.device);
    if let Some(note) = note {
        eprintln!("{note}");
    }
    tr.options.precision = precision;
    if let Some(gain) = colour.chroma_gain {
        tr.set_chroma_gain(gain)?;
    }
    if colour.raw_chroma {
        tr.use_raw_chroma()?;
    }
    if let Some(t) = colour.temperature {
        tr.set_temperature(t)?;
    }
    Ok(tr)
}

fn translate_options(layout: LayoutArgs) -> TranslateOptions {
    TranslateOptions { tile: layout.tile, margin: layout.margin, precision: layout.precision, ..Default::default() }
}

pub fn translate(checkpoints: &Path, a: TranslateArgs) -> Result<()> {
    let model = resolve_model(checkpoints, a.model, Some(&a.to));
    let mut tr = load_translator_generation(&model, &a.device, a.layout, a.colour, &a.generation)?;
    // An unknown domain is reported before anything else is checked.
    tr.generator_to(&a.to)?;
    let output = a.output.unwrap_or_else(|| default_output_path(&a.input, &a.to));
    if let (Ok(i), Ok(o)) = (a.input.canonicalize(), output.canonicalize()) {
        if i == o {
            bail!("the output {} is the input file; inputs are never overwritten", output.display());
        }
    }
    if output.exists() && !a.overwrite {
        bail!("{} already exists; add --overwrite to replace it", output.display());
    }
    let img = crate::data::decode_image(&a.input)?;
    // Shown only if the image goes through tiles, where a large one takes minutes.
    let bar = super::styled(ProgressBar::new(0), "{msg:>10} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}]");
    let shown = bar.clone();
    tr.options.progress = Some(TileProgress(std::sync::Arc::new(move |stage, done, total| {
        shown.set_message(stage);
        shown.set_length(total);
        shown.set_position(done);
    })));
    let out = tr.translate(&a.to, &img)?;
    bar.finish_and_clear();
    crate::util::atomic_write(&output, &crate::data::image_io::png_bytes(&out)?)?;
    outln!("{} → {} ({}x{}, to {})", a.input.display(), output.display(), out.width(), out.height(), a.to);
    Ok(())
}

pub fn convert(checkpoints: &Path, a: ConvertArgs) -> Result<()> {
    let model = resolve_model(checkpoints, a.model, Some(&a.to));
    let tr = load_translator(&model, &a.device, a.layout, a.colour)?;
    // Ctrl-C, SIGTERM and SIGHUP finish the images in hand and stop; a second one exits at once.
    // Every output is written atomically, so neither leaves a partial file.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    super::stop_on_interrupt(stop.clone(), "finishing the images in hand…", "exiting now (outputs written so far are complete)");
    let opts = ConvertOptions { to: a.to.clone(), overwrite: a.overwrite, batch: a.batch, shard: a.shard, stop: Some(stop) };
    let bar = super::styled(ProgressBar::new(0), "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}");
    let summary = convert_folder(&tr, &a.input_dir, &a.output_dir, &opts, &mut |done, total, ips| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{ips:.2} img/s"));
    })?;
    bar.finish_and_clear();
    // After SIGHUP there may be no terminal: outln! keeps a failed write from turning a clean stop
    // into a panic.
    let shard = a.shard.map(|k| format!("shard {k}: ")).unwrap_or_default();
    outln!("{shard}{}", summary.report());
    if !summary.failed.is_empty() {
        bail!("{} file(s) failed", summary.failed.len());
    }
    Ok(())
}

pub fn import(checkpoints: &Path, a: ImportArgs) -> Result<()> {
    let [da, db] = <[String; 2]>::try_from(a.domains).map_err(|_| anyhow::anyhow!("--domains takes two names, e.g. horse,zebra"))?;
    let req = ImportRequest { run_dir: checkpoints.join(&a.name), g_ab: a.g_ab, g_ba: a.g_ba, domains: [da, db], generator: a.generator };
    let cfg = import_model(&req)?;
    outln!(
        "imported {} ({}, ngf {}, {}→{} channels) into {}",
        cfg.g_ab.kind,
        a.name,
        cfg.g_ab.ngf,
        cfg.domain_a.channels,
        cfg.domain_b.channels,
        req.run_dir.display()
    );
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<()> {
    if a.format == ExportFormat::Onnx {
        return export_onnx(a);
    }
    if a.to.is_some() {
        bail!("--to applies to --format onnx only (the other formats export both generators)");
    }
    let out = a.output.unwrap_or_else(|| a.model.join("export"));
    let written = match a.format {
        ExportFormat::TorchKeys => export_torch_keys(&a.model, &out),
        ExportFormat::Generators => crate::interop::export_generators(&a.model, &out, a.half),
        ExportFormat::Onnx => unreachable!("handled above"),
    }
    .with_context(|| format!("exporting {}", a.model.display()))?;
    for p in written {
        outln!("wrote {}", p.display());
    }
    Ok(())
}

/// `export --format onnx`: one direction to one .onnx file.
fn export_onnx(a: ExportArgs) -> Result<()> {
    let e = crate::interop::onnx::export_onnx(&a.model, a.to.as_deref(), a.half, a.output.as_deref()).with_context(|| format!("exporting {} to ONNX", a.model.display()))?;
    outln!(
        "wrote {} ({} bytes): {} → {}, {} channel(s) in, {} out, image sides multiples of {}",
        e.path.display(),
        e.bytes,
        e.from.name,
        e.to.name,
        e.from.channels,
        e.to.channels,
        e.size_multiple
    );
    Ok(())
}

pub fn eval(checkpoints: &Path, a: EvalArgs) -> Result<()> {
    if a.truth.is_none() && a.fid.fid_weights.is_none() {
        bail!("eval needs --truth DIR (PSNR/SSIM against true images) or --fid-weights FILE --reference DIR (FID/KID)");
    }
    if a.fid.fid_weights.is_some() && a.reference.is_none() {
        bail!("--fid-weights needs --reference DIR: real images of the target domain to compare with");
    }
    let needs_model = a.truth.is_some() || a.model.is_some();
    let tr = if needs_model {
        let model = resolve_model(checkpoints, a.model.clone(), a.to.as_deref());
        Some(load_translator(&model, &a.device, a.layout, a.colour)?)
    } else {
        None
    };
    let to = || a.to.clone().context("--to DOMAIN is needed to translate");
    let mut json = serde_json::Map::new();
    // With --truth and --fid-weights both, the translations PSNR/SSIM scored serve FID/KID too.
    let mut translated = None;
    if let (Some(truth), Some(tr)) = (&a.truth, &tr) {
        let keep = a.fid.fid_weights.is_some();
        let (report, translations) = crate::eval::evaluate_keeping(tr, &to()?, &a.input, truth, a.short_side, keep)?;
        let report = report?;
        translated = keep.then_some(translations);
        for (p, why) in &report.skipped {
            eprintln!("skipped {}: {why}", p.display());
        }
        out!("{}", report.table());
        json.insert("psnr_ssim".into(), serde_json::to_value(&report)?);
    }
    if let (Some(weights), Some(reference)) = (&a.fid.fid_weights, &a.reference) {
        use crate::eval::fid_features as ff;
        let model = crate::eval::inception::load_fid_inception(weights, a.fid.fid_weights_unchecked)?;
        let cache = if a.no_fid_cache { None } else { a.fid_cache.clone().or_else(ff::default_cache_dir) };
        let bar = super::styled(ProgressBar::new(0), "{msg} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}]");
        let input = match (&tr, translated) {
            (Some(_), Some(translations)) => {
                bar.set_message("features");
                ff::features_of_images(&model, &translations)?
            }
            (Some(tr), None) => {
                bar.set_message("translating + features");
                let translations = crate::eval::translate_folder(tr, &to()?, &a.input, a.short_side, &mut |d, t| {
                    bar.set_length(t as u64);
                    bar.set_position(d as u64);
                })?;
                for (p, why) in &translations.1 {
                    eprintln!("skipped {}: {why}", p.display());
                }
                ff::features_of_images(&model, &translations.0)?
            }
            (None, _) => {
                bar.set_message("features of --input");
                let f = ff::folder_features(&model, &a.input, cache.as_deref(), &mut |d, t| {
                    bar.set_length(t as u64);
                    bar.set_position(d as u64);
                })?;
                for (p, why) in &f.skipped {
                    eprintln!("skipped {}: {why}", p.display());
                }
                f.features
            }
        };
        bar.set_message("features of --reference");
        let kid_opts = crate::eval::fid::KidOptions { subsets: a.kid_subsets.max(1), subset_size: a.kid_subset_size, ..Default::default() };
        let report = ff::compare_with_reference(&model, &a.input, &input, reference, cache.as_deref(), &kid_opts, &mut |d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
        })?;
        bar.finish_and_clear();
        for (p, why) in &report.skipped {
            eprintln!("skipped {}: {why}", p.display());
        }
        if report.reference_cached > 0 {
            eprintln!("{} of {} reference features read from the cache", report.reference_cached, report.reference_images);
        }
        out!("{}", report.table());
        json.insert("fid_kid".into(), serde_json::to_value(&report)?);
    }
    if let Some(path) = a.json {
        let value = if json.len() == 1 { json.into_iter().next().map(|(_, v)| v).unwrap_or_default() } else { serde_json::Value::Object(json) };
        crate::util::atomic_write(&path, serde_json::to_string_pretty(&value)?.as_bytes())?;
        outln!("\nfull report: {}", path.display());
    }
    Ok(())
}

pub fn score(checkpoints: &Path, a: ScoreArgs) -> Result<()> {
    let model = resolve_model(checkpoints, a.model, Some(&a.domain));
    let tr = Translator::open(&model, &a.device)?;
    let (scores, skipped) = crate::eval::score_anomalies(&tr, &a.domain, &a.dir, a.short_side)?;
    for (p, why) in &skipped {
        eprintln!("skipped {}: {why}", p.display());
    }
    let mut csv = String::from("rank,file,cycle_error\n");
    for (i, s) in scores.iter().enumerate() {
        let name = s.file.display().to_string().replace('"', "\"\"");
        csv.push_str(&format!("{},\"{}\",{:.6}\n", i + 1, name, s.score));
    }
    crate::util::atomic_write(&a.csv, csv.as_bytes())?;
    outln!("{} images scored; the {} most anomalous (cycle error, 0-1 pixel units):", scores.len(), a.top.min(scores.len()));
    for (i, s) in scores.iter().take(a.top).enumerate() {
        outln!("{:>4}. {:.4}  {}", i + 1, s.score, s.file.display());
    }
    outln!("all scores: {}", a.csv.display());
    Ok(())
}
