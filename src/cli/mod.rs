//! The command line: clap definitions of every subcommand and the handlers that run them with
//! progress bars. `main.rs` only parses and calls [`dispatch`].

mod bench_cmd;
mod dataset_cmd;
mod model_cmd;
mod studio_cmd;
mod train_cmd;

use crate::model::GeneratorKind;
use crate::train::{GanLoss, Method, PairedLoss};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "cyclestudio", version, about = "Train and use CycleGAN image translators (CLI and terminal studio)")]
pub struct Cli {
    /// Folder holding the training runs (one subfolder per --name).
    #[arg(long, global = true, default_value = "checkpoints")]
    pub checkpoints: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a CycleGAN (or CUT/FastCUT) on a two-domain dataset (or continue one with --resume).
    Train(Box<TrainArgs>),
    /// Create or inspect datasets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Translate one image to a domain (output beside it as STEM.DOMAIN.png).
    Translate(TranslateArgs),
    /// Translate every image of a folder tree into another folder.
    Convert(ConvertArgs),
    /// Import generators trained with the PyTorch reference (.pth state dicts).
    Import(ImportArgs),
    /// Export a model's generators: reference key names, a translate-only copy, or ONNX.
    Export(ExportArgs),
    /// Open the terminal studio (also what `cyclestudio` alone does).
    Tui(TuiArgs),
    /// Score translations of a folder against true images (PSNR, SSIM, and the trivial baseline).
    Eval(EvalArgs),
    /// Rank a domain's images by cycle-reconstruction error (most anomalous first).
    Score(ScoreArgs),
    /// Time training iterations and translation, with peak memory (medians over repeats).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Cases to run: train128, train256, cut128, fastcut128, cut256, fastcut256, infer256, infer1024 (default: all).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value = crate::train::request::DEFAULT_DEVICE)]
    pub device: String,
    /// What the convolutions multiply in (see train --precision).
    #[arg(long, value_enum, default_value_t = crate::ops::Precision::Fp32)]
    pub precision: crate::ops::Precision,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run one case in this process and print its JSON.
    #[arg(long, hide = true)]
    pub case_in_process: Option<String>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model to translate --input with (PSNR/SSIM; with --fid-weights, FID/KID of the translations).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Target domain of the translation (needed with --truth or --model).
    #[arg(long)]
    pub to: Option<String>,
    /// Folder of images: translated with the model, or with --fid-weights and no --model, the
    /// images to judge as they are (e.g. translations made elsewhere).
    #[arg(long)]
    pub input: PathBuf,
    /// Folder of the true translations, matched by file name stem (PSNR/SSIM).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    #[command(flatten)]
    pub fid: FidWeightsArgs,
    /// FID/KID: folder of real images of the target domain.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Folder of the feature cache (default: ~/.cache/cyclestudio/fid).
    #[arg(long)]
    pub fid_cache: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    pub no_fid_cache: bool,
    /// KID subsets and subset size (torch-fidelity's defaults; the size is lowered to the
    /// smaller set's).
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    /// Short side both are resized to before scoring (0 = as is).
    #[arg(long, default_value_t = 256)]
    pub short_side: u32,
    /// Also write the full report (per image) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub layout: LayoutArgs,
    #[command(flatten)]
    pub colour: ColourArgs,
    #[arg(long, default_value = crate::train::request::DEFAULT_DEVICE)]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Folder of images of the domain.
    pub dir: PathBuf,
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The domain the images are supposed to belong to.
    #[arg(long)]
    pub domain: String,
    /// How many of the most anomalous images to print.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// CSV of all scores (default: scores.csv in the current folder).
    #[arg(long, default_value = "scores.csv")]
    pub csv: PathBuf,
    /// Short side images are resized to before scoring (0 = as is).
    #[arg(long, default_value_t = 256)]
    pub short_side: u32,
    #[arg(long, default_value = crate::train::request::DEFAULT_DEVICE)]
    pub device: String,
}

/// The FID Inception network's weights (eval's FID/KID, train's --eval-every).
#[derive(Args, Debug, Clone)]
pub struct FidWeightsArgs {
    /// The FID Inception weights, pt_inception-2015-12-05-6726825d.pth (downloaded once from
    /// pytorch-fid's release page, see README).
    #[arg(long, value_name = "FILE")]
    pub fid_weights: Option<PathBuf>,
    /// Use --fid-weights even if it is not the standard file (scores are then not comparable to
    /// pytorch-fid's).
    #[arg(long)]
    pub fid_weights_unchecked: bool,
}

/// How a --keep-luma model's colour is applied (translate, convert, eval).
#[derive(Args, Debug, Clone, Copy)]
pub struct ColourArgs {
    /// Scale the predicted colour of a --keep-luma model: 0 gives the grey input back, 1 (default)
    /// the colours as trained, below 1 more muted, above 1 more saturated.
    #[arg(long)]
    pub chroma_gain: Option<f64>,
    /// Use a --keep-luma model's colour exactly as the network predicts it, without the low-pass
    /// that removes the checkerboard patterns of its transposed convolutions.
    #[arg(long)]
    pub raw_chroma: bool,
    /// Read-out temperature of a model trained with --paired-loss classify: lower gives more
    /// vivid colour (the most likely colour), 1 the mean colour of its prediction (cautious).
    /// Default 0.38.
    #[arg(long)]
    pub temperature: Option<f64>,
}

/// How an image is laid out for the network (translate, convert, eval).
#[derive(Args, Debug, Clone, Copy)]
pub struct LayoutArgs {
    /// Translate in overlapping tiles of this side (automatic above ~2.4 megapixels); tiles use
    /// the whole image's normalisation statistics, so they agree with the whole-image result.
    #[arg(long)]
    pub tile: Option<usize>,
    /// Pixels of mirrored context around the image while translating (cropped off after).
    /// 0 translates the image exactly as it is, as the PyTorch reference's test.py does.
    #[arg(long, default_value_t = crate::translate::DEFAULT_MARGIN)]
    pub margin: usize,
    /// What the convolutions multiply in: fp32, or bf16 with fp32 sums (faster on CPUs with
    /// AVX512-BF16; a CPU without bf16 instructions runs fp32 and says so).
    #[arg(long, value_enum, default_value_t = crate::ops::Precision::Fp32)]
    pub precision: crate::ops::Precision,
}

#[derive(Args, Debug)]
pub struct TranslateArgs {
    pub input: PathBuf,
    /// Target domain name (from the model's config.toml), e.g. color.
    #[arg(long)]
    pub to: String,
    /// Model folder (default: the first of <checkpoints>/default, the runs there from the most
    /// recently saved, and the grey→colour model built into cyclestudio that knows --to).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output file (default: INPUT_STEM.DOMAIN.png beside the input).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// Which generation of the model: latest, or best (the lowest held-out KID of a run trained
    /// with --eval-every).
    #[arg(long, default_value = "latest")]
    pub generation: String,
    #[command(flatten)]
    pub colour: ColourArgs,
    #[arg(long, default_value = crate::train::request::DEFAULT_DEVICE)]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    pub input_dir: PathBuf,
    #[arg(long)]
    pub to: String,
    #[arg(short, long = "output")]
    pub output_dir: PathBuf,
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Redo outputs that already exist (default: skip them, so re-runs resume).
    #[arg(long)]
    pub overwrite: bool,
    /// Images of the same size translated together.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Convert only part K of N (K from 1 to N) of the tree, split by each file's path relative
    /// to IN_DIR: N processes with K = 1..N convert disjoint parts into one output tree. `auto`
    /// takes K and N from a Slurm job array; `auto/N` takes K from a Kubernetes Indexed Job.
    #[arg(long, value_name = "K/N|auto")]
    pub shard: Option<crate::translate::Shard>,
    #[command(flatten)]
    pub layout: LayoutArgs,
    #[command(flatten)]
    pub colour: ColourArgs,
    #[arg(long, default_value = crate::train::request::DEFAULT_DEVICE)]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Name of the new model folder under <checkpoints>.
    #[arg(long)]
    pub name: String,
    /// The reference's G_A (A→B), e.g. latest_net_G_A.pth.
    #[arg(long)]
    pub g_ab: PathBuf,
    /// The reference's G_B (B→A); optional.
    #[arg(long)]
    pub g_ba: Option<PathBuf>,
    /// Domain names A,B, e.g. horse,zebra.
    #[arg(long, value_delimiter = ',', required = true)]
    pub domains: Vec<String>,
    /// Architecture; inferred from the weights when omitted.
    #[arg(long)]
    pub generator: Option<crate::model::GeneratorKind>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = ExportFormat::TorchKeys)]
    pub format: ExportFormat,
    /// Output folder (default: <model>/export); with --format onnx the .onnx file
    /// (default: <model>/export/<DOMAIN>.onnx).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// With --format onnx: the direction, by target domain (default: domain B).
    #[arg(long)]
    pub to: Option<String>,
    /// With --format generators or onnx: store the weights as f16 (half the size).
    #[arg(long)]
    pub half: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Safetensors with the reference's state-dict keys (G_A.safetensors, G_B.safetensors).
    TorchKeys,
    /// A translate-only model folder (config.toml + generators, no training state).
    Generators,
    /// One generator as an ONNX model (opset 17) for ONNX Runtime and other runtimes.
    Onnx,
}

#[derive(Args, Debug, Default)]
pub struct TuiArgs {
    /// Extra folder(s) holding datasets (default: datasets).
    #[arg(long)]
    pub datasets: Vec<PathBuf>,
    /// Force the inline image protocol.
    #[arg(long, value_enum)]
    pub graphics: Option<crate::tui::preview::Graphics>,
}

#[derive(Subcommand, Debug)]
pub enum DatasetCommand {
    /// Build a dataset under datasets/NAME.
    Create(DatasetCreateArgs),
    /// Print a dataset's domains, image counts, sizes and unreadable files.
    Info {
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct DatasetCreateArgs {
    pub name: String,
    /// A folder of colour photos: domain A `gray` (1 channel) and B `color`.
    #[arg(long, value_name = "PHOTOS_DIR", conflicts_with = "domains")]
    pub gray2color: Option<PathBuf>,
    /// Two folders, one per domain.
    #[arg(long, num_args = 2, value_names = ["DIR_A", "DIR_B"])]
    pub domains: Option<Vec<PathBuf>>,
    /// Domain names for --domains, e.g. photo,painting.
    #[arg(long, value_delimiter = ',', default_value = "A,B")]
    pub names: Vec<String>,
    /// Channel counts for --domains, e.g. 3,3 or 1,3.
    #[arg(long, value_delimiter = ',', default_value = "3,3")]
    pub channels: Vec<usize>,
    /// With --gray2color: put every training photo in both domains (same names), for paired mode.
    #[arg(long)]
    pub paired: bool,
    /// Percentage of images held out for testing.
    #[arg(long, default_value_t = 10)]
    pub test_percent: u32,
    /// Downscale images whose longer side exceeds this many pixels (0 = keep).
    #[arg(long, default_value_t = 0)]
    pub max_side: u32,
    /// Folder the dataset is created in.
    #[arg(long, default_value = "datasets")]
    pub datasets: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Dataset folder (trainA/ trainB/ …). Not needed with --resume.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Run name: the checkpoint goes to <checkpoints>/NAME.
    #[arg(long)]
    pub name: String,
    /// Continue the run in <checkpoints>/NAME from its latest checkpoint, with its saved settings.
    #[arg(long, conflicts_with = "resume_or_start")]
    pub resume: bool,
    /// Continue the run if it has a checkpoint, else start it with the given settings: the same
    /// command line for a first start and every restart (a requeued cluster job). Refuses, naming
    /// the setting, if a given setting differs from the saved run's.
    #[arg(long)]
    pub resume_or_start: bool,
    /// cyclegan (two generators, cycle and identity losses), cut or fastcut (one generator A→B
    /// with PatchNCE; the CUT reference's defaults). Default cyclegan.
    #[arg(long = "model", value_enum)]
    pub method: Option<Method>,
    /// Generator architecture (default resnet_9blocks).
    #[arg(long)]
    pub generator: Option<GeneratorKind>,
    /// Generator / discriminator base widths (default 64).
    #[arg(long)]
    pub ngf: Option<usize>,
    #[arg(long)]
    pub ndf: Option<usize>,
    /// Layers of the PatchGAN discriminator (default 3 = 70×70 patches).
    #[arg(long)]
    pub n_layers_d: Option<usize>,
    /// Training crop size (default 256).
    #[arg(long)]
    pub size: Option<usize>,
    /// Short side images are resized to before cropping (default size·286/256).
    #[arg(long)]
    pub load_size: Option<usize>,
    /// Steps at the initial learning rate (then --decay-iters of linear decay).
    #[arg(long, conflicts_with_all = ["epochs", "decay_epochs"])]
    pub iters: Option<u64>,
    #[arg(long)]
    pub decay_iters: Option<u64>,
    /// Epochs at the initial learning rate (the reference's: CycleGAN 100, CUT 200, FastCUT 150).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Epochs of linear decay to zero (CycleGAN 100, CUT 200, FastCUT 50).
    #[arg(long)]
    pub decay_epochs: Option<u64>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam learning rate (default 2e-4) and β1 (default 0.5).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Cycle-consistency weight (default 10).
    #[arg(long)]
    pub lambda_cycle: Option<f64>,
    /// Identity loss weight relative to --lambda-cycle (default 0.5; 0 disables it).
    #[arg(long)]
    pub lambda_identity: Option<f64>,
    /// lsgan (default) or vanilla.
    #[arg(long, value_enum)]
    pub gan_loss: Option<GanLoss>,
    /// Size of the pool of earlier fakes shown to the discriminators (default 50; CUT: none).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Supervised mode for aligned datasets: adds L1 between each translation and its true pair.
    #[arg(long)]
    pub paired: bool,
    /// Weight of the paired term (default 10).
    #[arg(long)]
    pub lambda_paired: Option<f64>,
    /// Weight of the generators' adversarial terms (default 1 = the reference; 0 with --paired
    /// trains a pure regression, which scores best on PSNR/SSIM but paints more cautiously).
    #[arg(long)]
    pub lambda_gan: Option<f64>,
    /// The paired term: l1 (pix2pix, default) or l2 (the mean of plausible answers; best PSNR).
    #[arg(long, value_enum)]
    pub paired_loss: Option<PairedLoss>,
    /// Grey→colour: predict only colour and keep the input's brightness exactly (A→B generator).
    #[arg(long)]
    pub keep_luma: bool,
    /// Random seed (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Turn off random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// cpu or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// What the convolutions multiply in: fp32, or bf16 with fp32 sums, master weights and Adam
    /// state (faster on CPUs with AVX512-BF16). Default fp32 for a new run; --resume keeps the
    /// run's unless given.
    #[arg(long, value_enum)]
    pub precision: Option<crate::ops::Precision>,
    #[arg(long)]
    pub sample_every: Option<u64>,
    #[arg(long)]
    pub save_every: Option<u64>,
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Health checks (collapse, discriminator balance) every N steps; 0 disables them.
    #[arg(long)]
    pub health_every: Option<u64>,
    /// If a checkpoint cannot be written (disk full, read-only): warn and keep training instead
    /// of stopping. The previous checkpoint stays intact either way.
    #[arg(long)]
    pub keep_going_on_save_error: bool,
    /// No progress bar; print a line per logged step instead.
    #[arg(long)]
    pub quiet: bool,
    /// Score held-out images (KID, FID; PSNR/SSIM on paired data) every N steps, keeping the
    /// generators with the lowest KID in <run>/best/. Needs --fid-weights.
    #[arg(long)]
    pub eval_every: Option<u64>,
    #[command(flatten)]
    pub fid: FidWeightsArgs,
    /// Held-out images of domain A / B for --eval-every (default: the dataset's testA / testB).
    #[arg(long, value_name = "DIR")]
    pub val_a: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub val_b: Option<PathBuf>,
}

/// Runs a parsed command line.
/// The exit status after a second Ctrl-C / SIGTERM / SIGHUP (128 + SIGINT, as shells report an
/// interrupted command): the command stopped without finishing its current work.
pub const EXIT_SECOND_INTERRUPT: i32 = 130;

/// Makes Ctrl-C, SIGTERM (a cluster's time limit or preemption, `kill`, `docker stop`) and SIGHUP
/// (a closed terminal or SSH session) set `stop`, saying `finishing` ("finishing this step…");
/// a second one exits at once with [`EXIT_SECOND_INTERRUPT`], saying `second`. Messages may find
/// no terminal (after SIGHUP), so a failed write is ignored rather than a panic.
fn stop_on_interrupt(stop: std::sync::Arc<std::sync::atomic::AtomicBool>, finishing: &'static str, second: &'static str) {
    ctrlc::set_handler(move || {
        use std::io::Write;
        if stop.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = writeln!(std::io::stderr(), "\nsecond interrupt: {second}");
            std::process::exit(EXIT_SECOND_INTERRUPT);
        }
        let _ = writeln!(std::io::stderr(), "\ninterrupted (Ctrl-C, SIGTERM or SIGHUP): {finishing}");
    })
    .ok();
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Train(args)) => train_cmd::train(&cli.checkpoints, *args),
        Some(Command::Dataset(cmd)) => dataset_cmd::run(cmd),
        Some(Command::Translate(a)) => model_cmd::translate(&cli.checkpoints, a),
        Some(Command::Convert(a)) => model_cmd::convert(&cli.checkpoints, a),
        Some(Command::Import(a)) => model_cmd::import(&cli.checkpoints, a),
        Some(Command::Export(a)) => model_cmd::export(a),
        Some(Command::Tui(a)) => studio_cmd::open(&cli.checkpoints, a),
        Some(Command::Eval(a)) => model_cmd::eval(&cli.checkpoints, a),
        Some(Command::Score(a)) => model_cmd::score(&cli.checkpoints, a),
        Some(Command::Bench(a)) => bench_cmd::run(a),
        None => studio_cmd::open(&cli.checkpoints, TuiArgs::default()),
    }
}
