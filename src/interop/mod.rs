//! Interoperability with the PyTorch reference (pytorch-CycleGAN-and-pix2pix): the mapping
//! between its state-dict keys and ours, import of its `.pth` generators, export to its keys.
//! [`onnx`]: export of one generator as an ONNX model.

pub mod onnx;

use crate::checkpoint::{safetensors_bytes, save_generation, Network};
use crate::data::DomainSpec;
use crate::model::{Generator, GeneratorConfig, GeneratorKind, ModelSpec, OutputMode};
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// (our layer prefix, reference layer prefix) for every parameterised layer of a generator.
pub fn generator_key_map(kind: GeneratorKind) -> Vec<(String, String)> {
    match kind {
        GeneratorKind::Resnet { blocks: n } => {
            let mut m = vec![
                ("stem".to_string(), "model.1".to_string()),
                ("down.0".into(), "model.4".into()),
                ("down.1".into(), "model.7".into()),
            ];
            for i in 0..n {
                m.push((format!("blocks.{i}.conv1"), format!("model.{}.conv_block.1", 10 + i)));
                m.push((format!("blocks.{i}.conv2"), format!("model.{}.conv_block.5", 10 + i)));
            }
            m.push(("up.0".into(), format!("model.{}", 10 + n)));
            m.push(("up.1".into(), format!("model.{}", 13 + n)));
            m.push(("head".into(), format!("model.{}", 17 + n)));
            m
        }
        GeneratorKind::Unet { downs } => {
            let mut m = vec![("down.0".to_string(), "model.model.0".to_string()), ("up.0".into(), "model.model.3".into())];
            for i in 1..downs {
                let prefix = format!("model.model.1.{}model", "model.3.".repeat(i - 1));
                m.push((format!("down.{i}"), format!("{prefix}.1")));
                let up = if i == downs - 1 { 3 } else { 5 };
                m.push((format!("up.{i}"), format!("{prefix}.{up}")));
            }
            m
        }
    }
}

/// (our layer prefix, reference layer prefix) for every parameterised layer of the CUT
/// reference's anti-aliased ResNet generator (`no_antialias`/`no_antialias_up` off): its
/// `nn.Sequential` has a blur-pool after each down-sampling convolution and a blur up-sampling
/// before each up-sampling one.
pub fn antialiased_generator_key_map(blocks: usize) -> Vec<(String, String)> {
    let n = blocks;
    let mut m = vec![("stem".to_string(), "model.1".to_string()), ("down.0".into(), "model.4".into()), ("down.1".into(), "model.8".into())];
    for i in 0..n {
        m.push((format!("blocks.{i}.conv1"), format!("model.{}.conv_block.1", 12 + i)));
        m.push((format!("blocks.{i}.conv2"), format!("model.{}.conv_block.5", 12 + i)));
    }
    m.push(("up.0".into(), format!("model.{}", 13 + n)));
    m.push(("up.1".into(), format!("model.{}", 17 + n)));
    m.push(("head".into(), format!("model.{}", 21 + n)));
    m
}

/// The key map of a generator of either layout.
pub fn key_map_of(cfg: &GeneratorConfig) -> Result<Vec<(String, String)>> {
    Ok(match (cfg.kind, cfg.antialias) {
        (_, false) => generator_key_map(cfg.kind),
        (GeneratorKind::Resnet { blocks }, true) => antialiased_generator_key_map(blocks),
        (kind, true) => bail!("an anti-aliased {kind} has no reference layout"),
    })
}

/// The fixed blur filters the CUT reference keeps as buffers in its state dict (`model.K.filt`,
/// `[C,1,k,k]`): after each down-sampling convolution `[1,2,1]`⊗`[1,2,1]`/16, before each up-sampling
/// one `[1,3,3,1]`⊗`[1,3,3,1]`/64·4.
pub fn antialiased_blur_buffers(blocks: usize, ngf: usize) -> Result<Vec<(String, Tensor)>> {
    let filt = |taps: &[f32], scale: f32, channels: usize| -> Result<Tensor> {
        let k = taps.len();
        let sum: f32 = taps.iter().sum::<f32>().powi(2);
        let plane: Vec<f32> = (0..k * k).map(|i| taps[i / k] * taps[i % k] / sum * scale).collect();
        Ok(Tensor::from_vec(plane, (1, 1, k, k), &Device::Cpu)?.repeat((channels, 1, 1, 1))?)
    };
    Ok(vec![
        ("model.7.filt".to_string(), filt(&[1., 2., 1.], 1.0, 2 * ngf)?),
        ("model.11.filt".to_string(), filt(&[1., 2., 1.], 1.0, 4 * ngf)?),
        (format!("model.{}.filt", 12 + blocks), filt(&[1., 3., 3., 1.], 4.0, 4 * ngf)?),
        (format!("model.{}.filt", 16 + blocks), filt(&[1., 3., 3., 1.], 4.0, 2 * ngf)?),
    ])
}

/// (our layer prefix, reference layer prefix) for a PatchGAN with `n_layers`.
pub fn discriminator_key_map(n_layers: usize) -> Vec<(String, String)> {
    let mut m = vec![("layers.0".to_string(), "model.0".to_string())];
    for k in 1..=n_layers + 1 {
        m.push((format!("layers.{k}"), format!("model.{}", 2 + 3 * (k - 1))));
    }
    m
}

/// Renames reference-keyed tensors to our keys (weights and biases). Extra entries that old
/// reference checkpoints carry for instance norm (`running_mean`, `running_var`,
/// `num_batches_tracked`) are ignored; any other unknown key is an error.
pub fn from_reference_keys(map: &[(String, String)], tensors: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut used = 0;
    for (ours, theirs) in map {
        for p in ["weight", "bias"] {
            let key = format!("{theirs}.{p}");
            let t = tensors.get(&key).with_context(|| format!("missing {key}"))?;
            out.insert(format!("{ours}.{p}"), t.to_dtype(DType::F32)?);
            used += 1;
        }
    }
    let ignorable = |k: &str| k.ends_with(".running_mean") || k.ends_with(".running_var") || k.ends_with(".num_batches_tracked");
    let extra: Vec<&String> = tensors.keys().filter(|k| !ignorable(k)).collect();
    if extra.len() != used {
        let known: std::collections::HashSet<String> = map.iter().flat_map(|(_, t)| [format!("{t}.weight"), format!("{t}.bias")]).collect();
        let unknown: Vec<&&String> = extra.iter().filter(|k| !known.contains(k.as_str())).take(5).collect();
        bail!("unexpected keys for this architecture: {unknown:?}");
    }
    Ok(out)
}

/// Our tensors renamed to the reference's keys.
pub fn to_reference_keys(map: &[(String, String)], tensors: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    let lookup: HashMap<&str, &str> = map.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    tensors
        .iter()
        .map(|(k, t)| {
            let (layer, p) = k.rsplit_once('.').context("bad key")?;
            let theirs = lookup.get(layer).with_context(|| format!("no reference name for {k}"))?;
            Ok((format!("{theirs}.{p}"), t.clone()))
        })
        .collect()
}

/// Infers a reference generator's architecture from its state-dict shapes.
pub fn infer_generator(tensors: &HashMap<String, Tensor>) -> Result<GeneratorConfig> {
    let dims = |k: &str| -> Result<Vec<usize>> { Ok(tensors.get(k).with_context(|| format!("missing {k}"))?.dims().to_vec()) };
    if tensors.contains_key("model.model.0.weight") {
        let mut downs = 1;
        while tensors.contains_key(&format!("model.model.1.{}model.1.weight", "model.3.".repeat(downs - 1))) {
            downs += 1;
        }
        let first = dims("model.model.0.weight")?; // [ngf, in, 4, 4]
        let last = dims("model.model.3.weight")?; // [2ngf, out, 4, 4]
        if first.len() != 4 || last.len() != 4 || downs < 5 {
            bail!("shapes fit no known U-Net ({downs} levels)");
        }
        return Ok(GeneratorConfig { kind: GeneratorKind::Unet { downs }, in_channels: first[1], out_channels: last[1], ngf: first[0], output: OutputMode::Direct, antialias: false });
    }
    if tensors.contains_key("model.1.weight") && tensors.contains_key("model.7.filt") && tensors.contains_key("model.12.conv_block.1.weight") {
        // The CUT reference's anti-aliased ResNet.
        let mut blocks = 0;
        while tensors.contains_key(&format!("model.{}.conv_block.1.weight", 12 + blocks)) {
            blocks += 1;
        }
        let first = dims("model.1.weight")?; // [ngf, in, 7, 7]
        let last = dims(&format!("model.{}.weight", 21 + blocks))?; // [out, ngf, 7, 7]
        if first.len() != 4 || first[2] != 7 || last.len() != 4 {
            bail!("shapes fit no known anti-aliased ResNet generator");
        }
        return Ok(GeneratorConfig { kind: GeneratorKind::Resnet { blocks }, in_channels: first[1], out_channels: last[0], ngf: first[0], output: OutputMode::Direct, antialias: true });
    }
    if tensors.contains_key("model.1.weight") && tensors.contains_key("model.10.conv_block.1.weight") {
        let mut blocks = 0;
        while tensors.contains_key(&format!("model.{}.conv_block.1.weight", 10 + blocks)) {
            blocks += 1;
        }
        let first = dims("model.1.weight")?; // [ngf, in, 7, 7]
        let last = dims(&format!("model.{}.weight", 17 + blocks))?; // [out, ngf, 7, 7]
        if first.len() != 4 || first[2] != 7 || last.len() != 4 {
            bail!("shapes fit no known ResNet generator");
        }
        return Ok(GeneratorConfig { kind: GeneratorKind::Resnet { blocks }, in_channels: first[1], out_channels: last[0], ngf: first[0], output: OutputMode::Direct, antialias: false });
    }
    bail!("not a CycleGAN or CUT generator state dict (no model.1.weight / model.model.0.weight)")
}

/// Reads a PyTorch `.pth` state dict (zip pickle) into named tensors.
pub fn read_pth(path: &Path) -> Result<HashMap<String, Tensor>> {
    let entries = candle_core::pickle::read_all(path).with_context(|| format!("{}: not a readable PyTorch checkpoint", path.display()))?;
    if entries.is_empty() {
        bail!("{}: contains no tensors", path.display());
    }
    Ok(entries.into_iter().collect())
}

/// Builds a generator from reference-keyed tensors, checking every shape. The blur filters of
/// an anti-aliased (CUT) generator must be the fixed ones; they are not weights of ours.
pub fn generator_from_reference(tensors: &HashMap<String, Tensor>, cfg: &GeneratorConfig, device: &Device) -> Result<(Generator, HashMap<String, Tensor>)> {
    let mut tensors = tensors.clone();
    if let (true, GeneratorKind::Resnet { blocks }) = (cfg.antialias, cfg.kind) {
        for (key, expected) in antialiased_blur_buffers(blocks, cfg.ngf)? {
            let t = tensors.remove(&key).with_context(|| format!("missing {key} (the anti-aliasing filter)"))?;
            let diff = (t.to_dtype(DType::F32)?.to_device(&Device::Cpu)? - &expected)
                .map_err(|_| anyhow::anyhow!("{key} has shape {:?}, expected {:?}", t.dims(), expected.dims()))?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            if diff > 1e-6 {
                bail!("{key} is not the reference's fixed blur filter (differs by {diff})");
            }
        }
    }
    let ours = from_reference_keys(&key_map_of(cfg)?, &tensors)?;
    let vb = VarBuilder::from_tensors(ours.clone(), DType::F32, device);
    let g = Generator::new(cfg, vb).map_err(|e| anyhow::anyhow!("the weights do not fit {}: {e}", cfg.kind))?;
    Ok((g, ours))
}

/// `cyclestudio import`: one or two reference generators → a cyclestudio checkpoint folder.
pub struct ImportRequest {
    pub run_dir: PathBuf,
    pub g_ab: PathBuf,
    pub g_ba: Option<PathBuf>,
    pub domains: [String; 2],
    pub generator: Option<GeneratorKind>,
}

pub fn import(req: &ImportRequest) -> Result<ModelSpec> {
    let mut files = Vec::new();
    let mut cfg_ab: Option<GeneratorConfig> = None;
    for (net, path) in [(Network::GAb, Some(&req.g_ab)), (Network::GBa, req.g_ba.as_ref())] {
        let Some(path) = path else { continue };
        let tensors = read_pth(path)?;
        let mut cfg = infer_generator(&tensors).with_context(|| path.display().to_string())?;
        if let Some(kind) = req.generator {
            if kind != cfg.kind {
                bail!("{}: --generator {kind} given, but the weights are a {}", path.display(), cfg.kind);
            }
            cfg.kind = kind;
        }
        let (_, ours) = generator_from_reference(&tensors, &cfg, &Device::Cpu).with_context(|| path.display().to_string())?;
        if net == Network::GBa {
            if cfg.antialias || cfg_ab.as_ref().is_some_and(|ab| ab.antialias) {
                bail!("{}: a CUT/FastCUT model has one generator (A→B); import it without --g-ba", path.display());
            }
            if let Some(ab) = &cfg_ab {
                if ab.kind != cfg.kind || ab.ngf != cfg.ngf || ab.in_channels != cfg.out_channels || ab.out_channels != cfg.in_channels {
                    bail!("{} does not mirror the A→B generator's architecture", path.display());
                }
            }
        } else {
            cfg_ab = Some(cfg.clone());
        }
        let mut named: Vec<(String, Tensor)> = ours.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        files.push((net.file().to_string(), safetensors_bytes(&named)?));
    }
    let g = cfg_ab.context("no A→B generator")?;
    // Imported weights come without training state: the folder describes the model only
    // (`model.toml`), with no training config to resume from. The CUT reference's anti-aliased
    // generator makes it one-sided; CUT and FastCUT share that generator.
    let spec = ModelSpec {
        domain_a: DomainSpec { name: req.domains[0].clone(), channels: g.in_channels },
        domain_b: DomainSpec { name: req.domains[1].clone(), channels: g.out_channels },
        g_ba: req.g_ba.is_some().then(|| GeneratorConfig { in_channels: g.out_channels, out_channels: g.in_channels, ..g.clone() }),
        made_by: if g.antialias { "imported from the CUT reference" } else { "imported from the CycleGAN reference" }.into(),
        g_ab: g,
        translate_chroma_gain: None,
    };
    if req.run_dir.join(crate::checkpoint::LATEST).exists() {
        bail!("{} already holds a model; choose another --name", req.run_dir.display());
    }
    spec.save(&req.run_dir)?;
    save_generation(&req.run_dir, 0, &files)?;
    Ok(spec)
}

/// `cyclestudio export --format torch-keys`: the generators with the reference's key names, as
/// safetensors (`G_A.safetensors` = our G_AB, `G_B.safetensors` = our G_BA; a CUT model's one
/// generator as `G.safetensors`, with its blur filters, for the CUT reference's `netG`) for
/// `load_state_dict(safetensors.torch.load_file(...))`. Refuses a model whose generator is not
/// [`OutputMode::Direct`]: the reference has no network that composes its output from the input.
pub fn export_torch_keys(run_dir: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let spec = TrainConfig::load_model_spec(run_dir)?;
    if spec.g_ab.output != OutputMode::Direct || spec.g_ba.as_ref().is_some_and(|g| g.output != OutputMode::Direct) {
        bail!(
            "{} was trained with --keep-luma: its A→B generator predicts only colour and keeps the input's brightness, \
             which the PyTorch reference's generators cannot represent; export it with --format generators instead",
            run_dir.display()
        );
    }
    let generation = crate::checkpoint::load_generation(run_dir)?;
    std::fs::create_dir_all(out_dir)?;
    let g_ab = spec.g_ab.clone();
    let map = key_map_of(&g_ab)?;
    // The CUT reference calls its one (anti-aliased) generator G; CycleGAN's are G_A and G_B.
    let names = if g_ab.antialias { [(Network::GAb, "G"), (Network::GBa, "")] } else { [(Network::GAb, "G_A"), (Network::GBa, "G_B")] };
    let mut written = Vec::new();
    for (ours, theirs) in names {
        let file = ours.file();
        if theirs.is_empty() || !generation.has(file) {
            continue;
        }
        let mut tensors: Vec<(String, Tensor)> = generation.load_tensors(file, &Device::Cpu)?.into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut renamed = to_reference_keys(&map, &tensors)?;
        if let (true, GeneratorKind::Resnet { blocks }) = (g_ab.antialias, g_ab.kind) {
            // Its state dict holds the blur filters too; load_state_dict(strict) expects them.
            renamed.extend(antialiased_blur_buffers(blocks, g_ab.ngf)?);
        }
        let path = out_dir.join(format!("{theirs}.safetensors"));
        crate::util::atomic_write(&path, &safetensors_bytes(&renamed)?)?;
        written.push(path);
    }
    Ok(written)
}

/// `cyclestudio export --format generators`: a translate-only copy of a run (its `model.toml`,
/// its `config.toml` when it was trained here, and the generators of its newest checkpoint,
/// without discriminators or optimiser state) — the small folder to share or ship.
/// With `half`, weights are stored as f16 (half the size; they are widened to f32 on load).
pub fn export_generators(run_dir: &Path, out_dir: &Path, half: bool) -> Result<Vec<PathBuf>> {
    let cfg = TrainConfig::load(run_dir).ok();
    let spec = TrainConfig::model_spec_with(run_dir, cfg.as_ref())?;
    let generation = crate::checkpoint::load_generation(run_dir)?;
    let mut files = Vec::new();
    for net in Network::GENERATORS {
        let file = net.file();
        if !generation.has(file) {
            continue;
        }
        let bytes = if half {
            let mut tensors: Vec<(String, Tensor)> = generation.load_tensors(file, &Device::Cpu)?.into_iter().collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let halved = tensors.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F16)?))).collect::<Result<Vec<_>>>()?;
            safetensors_bytes(&halved)?
        } else {
            generation.read_verified(file)?
        };
        files.push((file.to_string(), bytes));
    }
    if out_dir.join(crate::checkpoint::LATEST).exists() {
        bail!("{} already holds a model", out_dir.display());
    }
    spec.save(out_dir)?;
    if let Some(cfg) = &cfg {
        cfg.save(out_dir)?;
    }
    save_generation(out_dir, generation.manifest.step, &files)?;
    Ok(files.iter().map(|(f, _)| out_dir.join(crate::checkpoint::LATEST).join(f)).collect())
}
