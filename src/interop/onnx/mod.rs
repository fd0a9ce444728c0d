//! `cyclestudio export --format onnx`: one direction of a model as a standard ONNX graph
//! (opset 17, dynamic batch, height and width) that ONNX Runtime, onnxruntime-web and other
//! runtimes run without cyclestudio. The graph is built from the checkpoint's tensors and the
//! architecture in `config.toml`, mirroring `model::{resnet, unet, chroma}` op for op; for a
//! `--keep-luma` generator it also holds the chroma low-pass and the composition over the
//! input's luma, so it returns what `Generator::forward` returns as the Translator sets it up.
//! tests/onnx.rs runs the files with ONNX Runtime against cyclestudio's own forward.

mod proto;

use crate::checkpoint::{load_generation, Network};
use crate::data::DomainSpec;
use crate::model::{colour_classes, Generator, GeneratorConfig, GeneratorKind, OutputMode};
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use proto::{attribute_type, data_type, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The operator set the graph is written against (every op used is in the default domain).
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17 (ONNX 1.12).
const IR_VERSION: i64 = 8;
/// Name of the graph's input: [N, input_channels, H, W] float32 in [-1, 1].
pub const INPUT_NAME: &str = "input";
/// Name of the graph's output: [N, output_channels, H, W] float32 in [-1, 1].
pub const OUTPUT_NAME: &str = "output";
/// PyTorch's InstanceNorm2d epsilon, which `ops::instance_norm` uses too.
const NORM_EPS: f32 = 1e-5;

/// What [`export_onnx`] wrote.
#[derive(Debug)]
pub struct OnnxExport {
    pub path: PathBuf,
    pub bytes: u64,
    pub from: DomainSpec,
    pub to: DomainSpec,
    /// Image sides must be multiples of this.
    pub size_multiple: usize,
}

/// Writes the generator of `run_dir` that translates to domain `to` (default: domain B, the
/// A→B generator, when the model has it) as an ONNX model to `out` (default:
/// `run_dir/export/<DOMAIN>.onnx`). With `half`, weights are stored as float16 and widened to
/// float32 inside the graph (half the file; inputs, outputs and arithmetic stay float32). The
/// file is written atomically: a failure leaves no file, and nothing is created before the
/// request is known to be valid.
pub fn export_onnx(run_dir: &Path, to: Option<&str>, half: bool, out: Option<&Path>) -> Result<OnnxExport> {
    let spec = TrainConfig::load_model_spec(run_dir)?;
    let generation = load_generation(run_dir)?;
    let (a, b) = (&spec.domain_a, &spec.domain_b);
    let has = |file: &str| generation.has(file);
    let targets: Vec<&str> = [(has(Network::GAb.file()), b.name.as_str()), (has(Network::GBa.file()), a.name.as_str())]
        .into_iter()
        .filter_map(|(present, name)| present.then_some(name))
        .collect();
    let to = match to {
        Some(t) => t,
        None => targets.first().copied().with_context(|| format!("model {} holds no generator", run_dir.display()))?,
    };
    let (file, gcfg, from, to_spec) = if to == b.name {
        (Network::GAb.file(), spec.g_ab.clone(), a, b)
    } else if let (true, Some(g_ba)) = (to == a.name, &spec.g_ba) {
        (Network::GBa.file(), g_ba.clone(), b, a)
    } else if to == a.name {
        bail!("model {} translates only {}→{}: it has no generator to '{to}'", run_dir.display(), a.name, b.name)
    } else {
        bail!("model {} has no domain '{to}'; it translates to: {}", run_dir.display(), targets.join(", "))
    };
    if !has(file) {
        bail!(
            "model {} has no generator that translates to '{to}' ({file} is not in its checkpoint); it translates to: {}",
            run_dir.display(),
            targets.join(", ")
        );
    }
    let default_out;
    let out = match out {
        Some(o) => o,
        None => {
            default_out = run_dir.join("export").join(format!("{to}.onnx"));
            default_out.as_path()
        }
    };
    if out.is_dir() {
        bail!("{} is a folder; give the ONNX file's name, e.g. -o {}", out.display(), out.join(format!("{to}.onnx")).display());
    }
    let tensors = generation.load_tensors(file, &Device::Cpu)?;
    let model_name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The model's own colour gain (the shipped default model has one), as `translate` applies it.
    let gain = if gcfg.output == OutputMode::Direct { 1.0 } else { spec.translate_chroma_gain.unwrap_or(crate::model::DEFAULT_CHROMA_GAIN) };
    let metadata = vec![
        ("from_domain", from.name.clone()),
        ("to_domain", to_spec.name.clone()),
        // What the graph takes: a CUT generator may take more channels than its domain has.
        ("input_channels", gcfg.in_channels.to_string()),
        ("output_channels", gcfg.out_channels.to_string()),
        ("value_range", "[-1, 1]: value = pixel / 127.5 - 1 for input and output".to_string()),
        ("layout", "NCHW; 3 channels are RGB, 1 channel is grey (ITU-R 601 luma)".to_string()),
        ("size_multiple", gcfg.kind.size_multiple().to_string()),
        ("architecture", gcfg.kind.to_string()),
        ("ngf", gcfg.ngf.to_string()),
        ("keep_luma", (gcfg.output != OutputMode::Direct).to_string()),
        ("chroma_gain", gain.to_string()),
        ("weights", if half { "float16" } else { "float32" }.to_string()),
        ("source_model", model_name),
        ("training_step", generation.manifest.step.to_string()),
    ];
    let bytes = generator_onnx(&gcfg, &tensors, &metadata, half, gain).with_context(|| generation.dir.join(file).display().to_string())?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        if out.starts_with(run_dir.join("export")) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        } else {
            bail!("cannot write {}: the folder {} does not exist", out.display(), dir.display());
        }
    }
    crate::util::atomic_write(out, &bytes).with_context(|| format!("cannot write the ONNX model {}", out.display()))?;
    Ok(OnnxExport { path: out.to_path_buf(), bytes: bytes.len() as u64, from: from.clone(), to: to_spec.clone(), size_multiple: gcfg.kind.size_multiple() })
}

/// The serialised ONNX model of the generator `cfg` with weights `tensors` (named as in
/// checkpoints), with `metadata` as the model's metadata properties.
/// `chroma_gain` scales a keep-luma generator's predicted colour before its low-pass (1: as trained).
pub fn generator_onnx(cfg: &GeneratorConfig, tensors: &HashMap<String, Tensor>, metadata: &[(&str, String)], half: bool, chroma_gain: f64) -> Result<Vec<u8>> {
    // Building the network checks that every tensor is present with the shape the architecture needs.
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    Generator::new(cfg, vb).map_err(|e| anyhow::anyhow!("the weights do not fit {} ({}→{} channels): {e}", cfg.kind, cfg.in_channels, cfg.out_channels))?;

    let mut g = GraphBuilder { tensors, half, nodes: Vec::new(), initializers: Vec::new(), names: 0, norm_params: HashMap::new() };
    let net = match cfg.kind {
        GeneratorKind::Resnet { blocks } => g.resnet(INPUT_NAME, blocks, cfg.antialias)?,
        GeneratorKind::Unet { downs } => g.unet_level(0, downs, INPUT_NAME)?,
    };
    let image = match cfg.output {
        OutputMode::Direct => net,
        OutputMode::ChromaOverLuma => {
            let scaled = g.chroma_gain(&net, chroma_gain);
            let chroma = g.lowpass_chroma(&scaled)?;
            g.compose_chroma_over_luma(INPUT_NAME, cfg.in_channels, &chroma)?
        }
        OutputMode::ChromaClasses => {
            let mean = g.annealed_mean(&net, colour_classes::DEFAULT_TEMPERATURE)?;
            let scaled = g.chroma_gain(&mean, chroma_gain);
            let chroma = g.lowpass_chroma(&scaled)?;
            g.compose_chroma_over_luma(INPUT_NAME, cfg.in_channels, &chroma)?
        }
    };
    // The node that computes the image (the last one) writes the graph's output name.
    let last = g.nodes.last_mut().context("empty graph")?;
    debug_assert_eq!(last.output, [image]);
    last.output = vec![OUTPUT_NAME.to_string()];

    let multiple = cfg.kind.size_multiple();
    let graph = GraphProto {
        node: g.nodes,
        name: format!("cyclestudio_{}", cfg.kind),
        initializer: g.initializers,
        doc_string: String::new(),
        input: vec![image_value(INPUT_NAME, cfg.in_channels, &format!("[N,{},H,W] in [-1,1]; H and W multiples of {multiple}", cfg.in_channels))],
        output: vec![image_value(OUTPUT_NAME, cfg.out_channels, &format!("[N,{},H,W] in [-1,1]", cfg.out_channels))],
    };
    let mut doc = format!(
        "cyclestudio {} generator (ngf {}): {} channel(s) in, {} out, values in [-1,1] (pixel/127.5 - 1), NCHW; \
         height and width must be multiples of {multiple}.",
        cfg.kind, cfg.ngf, cfg.in_channels, cfg.out_channels
    );
    if cfg.output == OutputMode::ChromaOverLuma {
        doc.push_str(" Keep-luma: the network predicts Cb, Cr, low-passed by [1,2,2,2,1]/8 and composed over the input's ITU-R 601 luma.");
    }
    if cfg.output == OutputMode::ChromaClasses {
        doc.push_str(&format!(
            " Keep-luma with colour classes: the network predicts a distribution over quantised Cb, Cr, read out as its annealed mean at temperature {}, low-passed by [1,2,2,2,1]/8 and composed over the input's ITU-R 601 luma.",
            colour_classes::DEFAULT_TEMPERATURE
        ));
    }
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![proto::OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "cyclestudio".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: doc,
        graph: Some(graph),
        metadata_props: metadata.iter().map(|(k, v)| proto::StringStringEntryProto { key: k.to_string(), value: v.clone() }).collect(),
    };
    Ok(prost::Message::encode_to_vec(&model))
}

/// A float32 image value [batch, channels, height, width] with named dynamic dimensions.
fn image_value(name: &str, channels: usize, doc: &str) -> ValueInfoProto {
    use proto::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    let dim = |v: Dim| Dimension { value: Some(v) };
    let shape = proto::TensorShapeProto {
        dim: vec![dim(Dim::DimParam("batch".into())), dim(Dim::DimValue(channels as i64)), dim(Dim::DimParam("height".into())), dim(Dim::DimParam("width".into()))],
    };
    let tensor = proto::type_proto::Tensor { elem_type: Some(data_type::FLOAT), shape: Some(shape) };
    ValueInfoProto { name: name.into(), r#type: Some(proto::TypeProto { value: Some(proto::type_proto::Value::TensorType(tensor)) }), doc_string: doc.into() }
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: Some(attribute_type::INT), i: Some(i), ..Default::default() }
}

fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: Some(attribute_type::FLOAT), f: Some(f), ..Default::default() }
}

fn attr_s(name: &str, s: &str) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: Some(attribute_type::STRING), s: Some(s.as_bytes().to_vec()), ..Default::default() }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: Some(attribute_type::INTS), ints: ints.to_vec(), ..Default::default() }
}

/// How a convolution layer is applied: its stride and zero padding, whether its bias is used
/// (not before an instance norm, which cancels it; the cyclestudio layers leave it out too).
#[derive(Clone, Copy)]
struct ConvSpec {
    stride: i64,
    pad: i64,
    output_padding: i64,
    bias: bool,
}

impl ConvSpec {
    fn new(stride: i64, pad: i64, bias: bool) -> Self {
        Self { stride, pad, output_padding: 0, bias }
    }
}

/// Accumulates nodes and initializers; every value gets a fresh name.
struct GraphBuilder<'a> {
    tensors: &'a HashMap<String, Tensor>,
    half: bool,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: usize,
    /// Channel count → (scale, bias) initializers of the instance norms, shared.
    norm_params: HashMap<usize, (String, String)>,
}

impl GraphBuilder<'_> {
    fn fresh(&mut self, hint: &str) -> String {
        self.names += 1;
        format!("{hint}_{}", self.names)
    }

    /// Adds a node with one output and returns the output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, attribute, 1).remove(0)
    }

    fn node_n(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, outputs: usize) -> Vec<String> {
        let output: Vec<String> = (0..outputs).map(|_| self.fresh(&op.to_lowercase())).collect();
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto { input: inputs.iter().map(|s| s.to_string()).collect(), output: output.clone(), name, op_type: op.into(), attribute });
        output
    }

    /// A float32 constant of shape `dims` (row-major values).
    fn const_f32(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(hint);
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), data_type: Some(data_type::FLOAT), name: name.clone(), raw_data });
        name
    }

    fn scalar(&mut self, v: f32) -> String {
        self.const_f32("c", &[], &[v])
    }

    /// A checkpoint tensor as an initializer under its own name, as float32 or (with `half`)
    /// float16 followed by a Cast to float32.
    fn weight(&mut self, key: &str) -> Result<String> {
        let t = self.tensors.get(key).with_context(|| format!("the checkpoint has no tensor {key}"))?;
        let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
        let flat = t.to_dtype(DType::F32)?.flatten_all()?;
        if !self.half {
            let raw_data = flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.initializers.push(TensorProto { dims, data_type: Some(data_type::FLOAT), name: key.into(), raw_data });
            return Ok(key.into());
        }
        let raw_data = flat.to_dtype(DType::F16)?.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims, data_type: Some(data_type::FLOAT16), name: key.into(), raw_data });
        Ok(self.node("Cast", &[key], vec![attr_i("to", data_type::FLOAT as i64)]))
    }

    fn pad(&mut self, x: &str, pad: usize, mode: &str) -> String {
        let p = pad as i64;
        let name = self.fresh("pads");
        let raw_data = [0, 0, p, p, 0, 0, p, p].iter().flat_map(|v: &i64| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: vec![8], data_type: Some(data_type::INT64), name: name.clone(), raw_data });
        self.node("Pad", &[x, &name], vec![attr_s("mode", mode)])
    }

    /// Convolution (or transposed convolution) with the layer `prefix`'s weights; returns the
    /// output and its channel count.
    fn conv(&mut self, op: &str, x: &str, prefix: &str, spec: ConvSpec) -> Result<(String, usize)> {
        let dims = self.tensors.get(&format!("{prefix}.weight")).with_context(|| format!("the checkpoint has no tensor {prefix}.weight"))?.dims().to_vec();
        let (k, out_channels) = match op {
            "Conv" => (dims[2], dims[0]),  // [Cout,Cin,K,K]
            _ => (dims[2], dims[1]),       // ConvTranspose: [Cin,Cout,K,K]
        };
        let w = self.weight(&format!("{prefix}.weight"))?;
        let b = if spec.bias { Some(self.weight(&format!("{prefix}.bias"))?) } else { None };
        let mut inputs = vec![x, w.as_str()];
        if let Some(b) = &b {
            inputs.push(b);
        }
        let mut attrs = vec![
            attr_ints("kernel_shape", &[k as i64, k as i64]),
            attr_ints("strides", &[spec.stride, spec.stride]),
            attr_ints("pads", &[spec.pad; 4]),
        ];
        if op == "ConvTranspose" && spec.output_padding != 0 {
            attrs.push(attr_ints("output_padding", &[spec.output_padding, spec.output_padding]));
        }
        Ok((self.node(op, &inputs, attrs), out_channels))
    }

    /// InstanceNormalization without affine parameters (scale 1, bias 0), epsilon 1e-5.
    fn instance_norm(&mut self, x: &str, channels: usize) -> String {
        let (scale, bias) = match self.norm_params.get(&channels) {
            Some(p) => p.clone(),
            None => {
                let p = (self.const_f32("norm_scale", &[channels], &vec![1.0; channels]), self.const_f32("norm_bias", &[channels], &vec![0.0; channels]));
                self.norm_params.insert(channels, p.clone());
                p
            }
        };
        self.node("InstanceNormalization", &[x, &scale, &bias], vec![attr_f("epsilon", NORM_EPS)])
    }

    fn conv_norm(&mut self, op: &str, x: &str, prefix: &str, spec: ConvSpec) -> Result<String> {
        let (h, c) = self.conv(op, x, prefix, spec)?;
        Ok(self.instance_norm(&h, c))
    }

    fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    fn leaky_relu(&mut self, x: &str) -> String {
        self.node("LeakyRelu", &[x], vec![attr_f("alpha", 0.2)])
    }

    /// `model::ResnetGenerator::forward`, plain or anti-aliased (CUT).
    fn resnet(&mut self, x: &str, blocks: usize, antialias: bool) -> Result<String> {
        let unbiased = |stride, pad| ConvSpec::new(stride, pad, false);
        let p = self.pad(x, 3, "reflect");
        let n = self.conv_norm("Conv", &p, "stem", unbiased(1, 0))?;
        let mut h = self.relu(&n);
        for i in 0..2 {
            let down = format!("down.{i}");
            h = if antialias {
                let (c, channels) = self.conv("Conv", &h, &down, unbiased(1, 1))?;
                let n = self.instance_norm(&c, channels);
                let r = self.relu(&n);
                self.blur_down(&r, channels)
            } else {
                let n = self.conv_norm("Conv", &h, &down, unbiased(2, 1))?;
                self.relu(&n)
            };
        }
        for i in 0..blocks {
            let p = self.pad(&h, 1, "reflect");
            let n = self.conv_norm("Conv", &p, &format!("blocks.{i}.conv1"), unbiased(1, 0))?;
            let r = self.relu(&n);
            let p = self.pad(&r, 1, "reflect");
            let n = self.conv_norm("Conv", &p, &format!("blocks.{i}.conv2"), unbiased(1, 0))?;
            h = self.node("Add", &[&h, &n], vec![]);
        }
        for i in 0..2 {
            let up = format!("up.{i}");
            let n = if antialias {
                let channels = self.tensors.get(&format!("{up}.weight")).context("the checkpoint has no up-sampling weight")?.dim(1)?; // [Cout,Cin,3,3]
                let u = self.blur_up(&h, channels)?;
                self.conv_norm("Conv", &u, &up, unbiased(1, 1))?
            } else {
                self.conv_norm("ConvTranspose", &h, &up, ConvSpec { output_padding: 1, ..unbiased(2, 1) })?
            };
            h = self.relu(&n);
        }
        let p = self.pad(&h, 3, "reflect");
        let (o, _) = self.conv("Conv", &p, "head", ConvSpec::new(1, 0, true))?;
        Ok(self.node("Tanh", &[&o], vec![]))
    }

    /// CUT's blur-pool (`model::antialias::blur_down`): reflect-pad 1, a depthwise
    /// [1,2,1]⊗[1,2,1]/16 with stride 2.
    fn blur_down(&mut self, x: &str, channels: usize) -> String {
        let taps = [1f32, 2., 1.];
        let plane: Vec<f32> = (0..9).map(|i| taps[i / 3] * taps[i % 3] / 16.0).collect();
        let w = self.const_f32("blur_down", &[channels, 1, 3, 3], &plane.repeat(channels));
        let p = self.pad(x, 1, "reflect");
        let attrs = vec![attr_ints("kernel_shape", &[3, 3]), attr_ints("strides", &[2, 2]), attr_i("group", channels as i64)];
        self.node("Conv", &[&p, &w], attrs)
    }

    /// CUT's blur up-sampling (`model::antialias::blur_up`), as the reference computes it:
    /// replicate-pad 1, a depthwise transposed [1,3,3,1]⊗[1,3,3,1]/16 with stride 2 and padding
    /// 2, then one row and column cut off each side.
    fn blur_up(&mut self, x: &str, channels: usize) -> Result<String> {
        let taps = [1f32, 3., 3., 1.];
        let plane: Vec<f32> = (0..16).map(|i| taps[i / 4] * taps[i % 4] / 16.0).collect();
        let w = self.const_f32("blur_up", &[channels, 1, 4, 4], &plane.repeat(channels));
        let p = self.pad(x, 1, "edge");
        let attrs = vec![attr_ints("kernel_shape", &[4, 4]), attr_ints("strides", &[2, 2]), attr_ints("pads", &[2; 4]), attr_i("group", channels as i64)];
        let t = self.node("ConvTranspose", &[&p, &w], attrs);
        let [starts, ends, axes] = [[1i64, 1], [-1, -1], [2, 3]].map(|v| self.const_i64("slice", &v));
        Ok(self.node("Slice", &[&t, &starts, &ends, &axes], vec![]))
    }

    /// An int64 vector constant.
    fn const_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: vec![values.len() as i64], data_type: Some(data_type::INT64), name: name.clone(), raw_data });
        name
    }

    /// `model::UnetGenerator::level`: level `i`'s inner model applied to `x`.
    fn unet_level(&mut self, i: usize, downs: usize, x: &str) -> Result<String> {
        let last = downs - 1;
        let down = format!("down.{i}");
        let h = if i < last {
            let act = if i == 0 {
                let (d, _) = self.conv("Conv", x, &down, ConvSpec::new(2, 1, true))?;
                self.leaky_relu(&d)
            } else {
                let n = self.conv_norm("Conv", x, &down, ConvSpec::new(2, 1, false))?;
                self.leaky_relu(&n)
            };
            let sub = self.unet_level(i + 1, downs, &act)?;
            self.node("Concat", &[&act, &sub], vec![attr_i("axis", 1)])
        } else {
            self.conv("Conv", x, &down, ConvSpec::new(2, 1, true))?.0
        };
        let r = self.relu(&h);
        let up = format!("up.{i}");
        if i == 0 {
            let (u, _) = self.conv("ConvTranspose", &r, &up, ConvSpec::new(2, 1, true))?;
            Ok(self.node("Tanh", &[&u], vec![]))
        } else {
            self.conv_norm("ConvTranspose", &r, &up, ConvSpec::new(2, 1, false))
        }
    }

    /// `model::lowpass_chroma` on the 2-channel chroma: replicated borders (Pad edge), then the
    /// separable [1,2,2,2,1]/8 filter as two depthwise convolutions (vertical, horizontal).
    /// The annealed mean of colour-class logits at temperature `t` (as
    /// [`colour_classes::annealed_mean`]): softmax of logits/t over the classes, then the
    /// expected (Cb, Cr) as a 1×1 convolution whose weights are the class centres.
    fn annealed_mean(&mut self, logits: &str, t: f64) -> Result<String> {
        let inv_t = self.scalar((1.0 / t) as f32);
        let scaled = self.node("Mul", &[logits, &inv_t], vec![]);
        let p = self.node("Softmax", &[&scaled], vec![attr_i("axis", 1)]);
        let bins = colour_classes::bins();
        let centres: Vec<f32> = bins.iter().map(|c| 2.0 * c.0).chain(bins.iter().map(|c| 2.0 * c.1)).collect();
        let w = self.const_f32("class_centres", &[2, bins.len(), 1, 1], &centres);
        Ok(self.node("Conv", &[&p, &w], vec![]))
    }

    /// `chroma` × `gain` (nothing added for 1).
    fn chroma_gain(&mut self, chroma: &str, gain: f64) -> String {
        if gain == 1.0 {
            return chroma.to_string();
        }
        let g = self.scalar(gain as f32);
        self.node("Mul", &[chroma, &g], vec![])
    }

    fn lowpass_chroma(&mut self, chroma: &str) -> Result<String> {
        let taps = [0.125f32, 0.25, 0.25, 0.25, 0.125];
        let kernel: Vec<f32> = taps.iter().chain(taps.iter()).copied().collect(); // one filter per channel
        let p = self.pad(chroma, 2, "edge");
        let mut h = p;
        for (hint, shape) in [("lowpass_v", [2, 1, 5, 1]), ("lowpass_h", [2, 1, 1, 5])] {
            let w = self.const_f32(hint, &shape, &kernel);
            let k = [shape[2] as i64, shape[3] as i64];
            h = self.node("Conv", &[&h, &w], vec![attr_ints("kernel_shape", &k), attr_i("group", 2)]);
        }
        Ok(h)
    }

    /// `model::compose_chroma_over_luma`: RGB from the input's luma and the chroma (Cb, Cr),
    /// shrinking the chroma of pixels whose colour would leave [0,1].
    fn compose_chroma_over_luma(&mut self, x: &str, in_channels: usize, chroma: &str) -> Result<String> {
        let luma = match in_channels {
            1 => x.to_string(),
            3 => {
                let w = self.const_f32("luma_weights", &[1, 3, 1, 1], &[0.299, 0.587, 0.114]);
                self.node("Conv", &[x, &w], vec![attr_ints("kernel_shape", &[1, 1])])
            }
            c => bail!("a keep-luma generator takes 1- or 3-channel images, not {c}"),
        };
        let (one, half) = (self.scalar(1.0), self.scalar(0.5));
        let shifted = self.node("Add", &[&luma, &one], vec![]);
        let y = self.node("Mul", &[&shifted, &half], vec![]); // [N,1,H,W] in [0,1]
        let parts = self.node_n("Split", &[chroma], vec![attr_i("axis", 1)], 2);
        let cb = self.node("Mul", &[&parts[0], &half], vec![]);
        let cr = self.node("Mul", &[&parts[1], &half], vec![]);
        let (k_r, k_gb, k_gr, k_b) = (self.scalar(1.402), self.scalar(-0.344136), self.scalar(0.714136), self.scalar(1.772));
        let r = self.node("Mul", &[&cr, &k_r], vec![]);
        let g_cb = self.node("Mul", &[&cb, &k_gb], vec![]);
        let g_cr = self.node("Mul", &[&cr, &k_gr], vec![]);
        let g = self.node("Sub", &[&g_cb, &g_cr], vec![]);
        let b = self.node("Mul", &[&cb, &k_b], vec![]);
        let offset = self.node("Concat", &[&r, &g, &b], vec![attr_i("axis", 1)]); // RGB − Y
        let eps = self.scalar(1e-6);
        let headroom = self.node("Sub", &[&one, &y], vec![]);
        let up_den = self.node("Max", &[&offset, &eps], vec![]);
        let up = self.node("Div", &[&headroom, &up_den], vec![]);
        let neg = self.node("Neg", &[&offset], vec![]);
        let down_den = self.node("Max", &[&neg, &eps], vec![]);
        let down = self.node("Div", &[&y, &down_den], vec![]);
        let limit = self.node("Min", &[&up, &down], vec![]);
        let per_pixel = self.node("ReduceMin", &[&limit], vec![attr_ints("axes", &[1]), attr_i("keepdims", 1)]);
        let zero = self.scalar(0.0);
        let fit = self.node("Clip", &[&per_pixel, &zero, &one], vec![]);
        let scaled = self.node("Mul", &[&offset, &fit], vec![]);
        let rgb = self.node("Add", &[&y, &scaled], vec![]); // [N,3,H,W] in [0,1]
        let (two, minus_one) = (self.scalar(2.0), self.scalar(-1.0));
        let doubled = self.node("Mul", &[&rgb, &two], vec![]);
        let centred = self.node("Sub", &[&doubled, &one], vec![]);
        Ok(self.node("Clip", &[&centred, &minus_one, &one], vec![]))
    }
}
