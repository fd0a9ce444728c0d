//! The command line: clap definitions of every subcommand and the handlers that run them with
//! progress bars. `main.rs` only parses and calls [`dispatch`].

/// `println!` for reports on stdout that ignores a closed stdout (`cyclestudio eval … | head`):
/// the rest of the report is dropped, the command's work and files are not, and nothing panics.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod bench_cmd;
mod dataset_cmd;
mod model_cmd;
mod studio_cmd;
mod sweep_cmd;
mod tensorboard_cmd;
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
    /// Write TensorBoard events for runs from their saved logs and samples (runs trained before
    /// events existed or with --no-tensorboard); replaces a run's earlier event files.
    TensorboardExport(TensorboardExportArgs),
    /// Train a grid of settings (--vary FLAG=V1,V2,…), each trial a run, and rank them on
    /// held-out pairs in CHECKPOINTS/NAME/leaderboard.csv and .md.
    Sweep(SweepArgs),
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep's name: trial K is the run CHECKPOINTS/NAME/tK.
    #[arg(long)]
    pub name: String,
    /// The dataset every trial trains on (needed unless --leaderboard).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// A train flag and its values, e.g. --vary lr=0.0001,0.0002 (repeat for a grid).
    #[arg(long, value_name = "FLAG=V1,V2,…")]
    pub vary: Vec<crate::sweep::Vary>,
    /// The score trials are ranked by: PSNR, SSIM or colourfulness of the A→B translations of the
    /// held-out images against their pairs (higher is better), or KID, FID (needs --fid-weights)
    /// or FD-DINOv2 (needs --dinov2-weights) of the translations against the held-out B images
    /// (lower is better).
    #[arg(long, value_enum, default_value_t = crate::sweep::Metric::Psnr)]
    pub metric: crate::sweep::Metric,
    /// With --fid-weights every trial also gets KID and FID.
    #[command(flatten)]
    pub fid: FidWeightsArgs,
    /// Short side the held-out images are resized to before scoring [default: the trials'
    /// training size; with --vary size, the largest].
    #[arg(long, value_name = "N")]
    pub short_side: Option<u32>,
    /// DINOv2 weights (timm's vit_small_patch14_dinov2 or a larger one, as .safetensors): every
    /// trial also gets its FD-DINOv2.
    #[arg(long, value_name = "FILE")]
    pub dinov2_weights: Option<PathBuf>,
    /// Held-out images of domain A [default: the dataset's testA].
    #[arg(long)]
    pub val_a: Option<PathBuf>,
    /// Their true translations in domain B, with the same file names [default: the dataset's testB].
    #[arg(long)]
    pub val_b: Option<PathBuf>,
    /// Successive halving: at a quarter and at half of the iterations (or --rungs), the worse
    /// half of the trials still running stops there (keeping its checkpoint and its row).
    #[arg(long)]
    pub halving: bool,
    /// The rungs of --halving as fractions of the iterations [default: 0.25,0.5].
    #[arg(long, value_delimiter = ',', requires = "halving")]
    pub rungs: Vec<f64>,
    /// Trials trained side by side in this process (they share its CPU threads or GPU).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Run only part K of N of the trials (trial i goes to part i mod N + 1), or auto from a
    /// Slurm job array (auto/N: a Kubernetes Indexed Job); --leaderboard merges the parts.
    #[arg(long)]
    pub shard: Option<crate::translate::Shard>,
    /// Only rebuild the leaderboard from the trials on disk.
    #[arg(long)]
    pub leaderboard: bool,
    /// The train flags every trial shares, after `--` (e.g. -- --size 128 --iters 2000).
    #[arg(last = true, value_name = "TRAIN FLAGS")]
    pub train_args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TensorboardExportArgs {
    /// Run folders (or run names under --checkpoints); a folder of runs exports each run in it.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Cases to run: train128, train256, cut128, fastcut128, cut256, fastcut256, infer256, infer512, infer1024
    /// (and inception8, the FID network; loop128, train128 through the whole training loop with
    /// its logging) [default: all but inception8 and loop128]
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Untimed runs of each case before the timed ones (the translation cases run one more when
    /// this is not 0: a loaded model's second translation, which keeps its transformed filters).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs of each case (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value = crate::train::request::DEFAULT_DEVICE)]
    pub device: String,
    /// What the convolutions multiply in (see train --precision).
    #[arg(long, value_enum, default_value_t = crate::ops::Precision::Fp32)]
    pub precision: crate::ops::Precision,
    /// loop128 without TensorBoard events (to measure what writing them costs).
    #[arg(long)]
    pub no_tensorboard: bool,
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
    /// Folder of the feature cache [default: ~/.cache/cyclestudio/fid, or under $CYCLESTUDIO_CACHE
    /// or $XDG_CACHE_HOME when set]
    #[arg(long)]
    pub fid_cache: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    pub no_fid_cache: bool,
    /// KID: how many random subsets of the features are compared, as torch-fidelity does.
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    /// KID: images per subset, as torch-fidelity does; lowered to the smaller set's size.
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
    /// Model folder (a CycleGAN: both directions) [default: chosen as translate chooses]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The domain the images are supposed to belong to.
    #[arg(long)]
    pub domain: String,
    /// How many of the most anomalous images to print.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// CSV file for all scores, ranked.
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
    /// pytorch-fid's release page, see docs/metrics.md).
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
    /// Scale the predicted colour of a --keep-luma model: 0 gives the grey input back, 1 the colours
    /// as trained, below 1 more muted, above 1 more saturated [default: from the model's config
    /// (2.5 for the built-in model), else 1]
    #[arg(long)]
    pub chroma_gain: Option<f64>,
    /// Use a --keep-luma model's colour exactly as the network predicts it, without the low-pass
    /// that removes the checkerboard patterns of its transposed convolutions.
    #[arg(long)]
    pub raw_chroma: bool,
    /// Read-out temperature of a model trained with --paired-loss classify: lower gives more
    /// vivid colour (the most likely colour), 1 the mean colour of its prediction (cautious)
    /// [default: 0.38]
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
    /// AVX512-BF16 or AMX; a CPU without bf16 instructions runs fp32 and says so).
    #[arg(long, value_enum, default_value_t = crate::ops::Precision::Fp32)]
    pub precision: crate::ops::Precision,
}

#[derive(Args, Debug)]
pub struct TranslateArgs {
    pub input: PathBuf,
    /// Target domain name (from the model's config.toml), e.g. color.
    #[arg(long)]
    pub to: String,
    /// Model folder [default: the first of CHECKPOINTS/default, the runs in CHECKPOINTS (most
    /// recently saved first) and the built-in grey→colour model that can translate to --to]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output file [default: INPUT_STEM.DOMAIN.png beside the input]
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
    /// Model folder [default: chosen as translate chooses]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Redo outputs that already exist; without it they are skipped, so a re-run resumes.
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
    /// Name of the new model folder under CHECKPOINTS.
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
    /// The model folder to export.
    #[arg(long)]
    pub model: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value_t = ExportFormat::TorchKeys)]
    pub format: ExportFormat,
    /// Output folder, or with --format onnx the .onnx file [default: MODEL/export, with --format
    /// onnx MODEL/export/DOMAIN.onnx]
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// With --format onnx: the direction, by target domain [default: domain B, or the model's only
    /// direction]
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
    /// Folder holding datasets; repeat the flag for several [default: datasets]
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
    #[arg(long, default_value = crate::data::DEFAULT_DATASETS_DIR)]
    pub datasets: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Dataset folder (trainA/ trainB/ …). Not needed with --resume.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Run name: the checkpoint goes to CHECKPOINTS/NAME.
    #[arg(long)]
    pub name: String,
    /// Continue the run in CHECKPOINTS/NAME from its latest checkpoint, with its saved settings.
    #[arg(long, conflicts_with = "resume_or_start")]
    pub resume: bool,
    /// Continue the run if it has a checkpoint, else start it with the given settings: the same
    /// command line for a first start and every restart (a requeued cluster job). Refuses, naming
    /// the setting, if a given setting differs from the saved run's.
    #[arg(long)]
    pub resume_or_start: bool,
    /// Write no TensorBoard events (by default each run writes them in its folder, for
    /// `tensorboard --logdir checkpoints`).
    #[arg(long)]
    pub no_tensorboard: bool,
    /// cyclegan (two generators, cycle and identity losses), cut or fastcut (one generator A→B
    /// with PatchNCE; the CUT reference's recipe) [default: cyclegan]
    #[arg(long = "model", value_enum)]
    pub method: Option<Method>,
    /// Generator architecture: resnet_Nblocks (N residual blocks, e.g. 6 or 9) or unet_S (S a power
    /// of two from 32 to 1024: 128, 256) [default: resnet_9blocks]
    #[arg(long)]
    pub generator: Option<GeneratorKind>,
    /// Generator base width (channels of its first layer) [default: 64]
    #[arg(long)]
    pub ngf: Option<usize>,
    /// Discriminator base width [default: 64]
    #[arg(long)]
    pub ndf: Option<usize>,
    /// Layers of the PatchGAN discriminator (3: 70×70 patches) [default: 3]
    #[arg(long)]
    pub n_layers_d: Option<usize>,
    /// Training crop size [default: 256]
    #[arg(long)]
    pub size: Option<usize>,
    /// Short side images are resized to before cropping [default: size·286/256]
    #[arg(long)]
    pub load_size: Option<usize>,
    /// Steps at the initial learning rate (then --decay-iters of linear decay), instead of epochs.
    #[arg(long, conflicts_with_all = ["epochs", "decay_epochs"])]
    pub iters: Option<u64>,
    /// Steps of linear decay to zero after --iters.
    #[arg(long)]
    pub decay_iters: Option<u64>,
    /// Epochs at the initial learning rate (the reference's) [default: CycleGAN 100, CUT 200,
    /// FastCUT 150]
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Epochs of linear decay to zero [default: CycleGAN 100, CUT 200, FastCUT 50]
    #[arg(long)]
    pub decay_epochs: Option<u64>,
    /// Images per step [default: 1]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam learning rate [default: 0.0002]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam β1 [default: 0.5]
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Cycle-consistency weight [default: 10]
    #[arg(long)]
    pub lambda_cycle: Option<f64>,
    /// Identity loss weight relative to --lambda-cycle; 0 disables it [default: 0.5]
    #[arg(long)]
    pub lambda_identity: Option<f64>,
    /// The adversarial loss [default: lsgan]
    #[arg(long, value_enum)]
    pub gan_loss: Option<GanLoss>,
    /// Size of the pool of earlier fakes shown to the discriminators [default: 50, CUT and
    /// FastCUT 0]
    #[arg(long)]
    pub pool: Option<usize>,
    /// Supervised mode for aligned datasets: adds L1 between each translation and its true pair.
    #[arg(long)]
    pub paired: bool,
    /// Weight of the paired term [default: 10]
    #[arg(long)]
    pub lambda_paired: Option<f64>,
    /// Weight of the generators' adversarial terms (1 is the reference's; 0 with --paired trains
    /// a pure regression, which scores best on PSNR/SSIM but paints more cautiously) [default: 1]
    #[arg(long)]
    pub lambda_gan: Option<f64>,
    /// The paired term [default: l1]
    #[arg(long, value_enum)]
    pub paired_loss: Option<PairedLoss>,
    /// Grey→colour: predict only colour and keep the input's brightness exactly (A→B generator).
    #[arg(long)]
    pub keep_luma: bool,
    /// Random seed [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Turn off random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// cpu or cuda:N [default: cpu, on --resume the run's]
    #[arg(long)]
    pub device: Option<String>,
    /// What the convolutions multiply in: fp32, or bf16 with fp32 sums, master weights and Adam
    /// state (faster on CPUs with AVX512-BF16 or AMX) [default: fp32, on --resume the run's]
    #[arg(long, value_enum)]
    pub precision: Option<crate::ops::Precision>,
    /// Save a sample grid (samples/step_N.png) every N steps [default: 100]
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Save a checkpoint every N steps (and at the end) [default: 500]
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Log the losses (log.jsonl; with --quiet, a line on stdout) every N steps [default: 10]
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Health checks (collapse, discriminator balance) every N steps; 0 disables them
    /// [default: 100]
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
    /// generators with the lowest KID in CHECKPOINTS/NAME/best/. Needs --fid-weights.
    #[arg(long)]
    pub eval_every: Option<u64>,
    #[command(flatten)]
    pub fid: FidWeightsArgs,
    /// Held-out images of domain A for --eval-every [default: the dataset's testA]
    #[arg(long, value_name = "DIR")]
    pub val_a: Option<PathBuf>,
    /// Held-out images of domain B for --eval-every [default: the dataset's testB]
    #[arg(long, value_name = "DIR")]
    pub val_b: Option<PathBuf>,
}

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

/// `bar` drawn with `template` (indicatif's syntax) and the command line's `=> ` bar characters.
fn styled(bar: indicatif::ProgressBar, template: &str) -> indicatif::ProgressBar {
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    bar
}

/// Runs a parsed command line.
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
        Some(Command::TensorboardExport(a)) => tensorboard_cmd::export(&cli.checkpoints, a),
        Some(Command::Sweep(a)) => sweep_cmd::run(&cli.checkpoints, a),
        None => studio_cmd::open(&cli.checkpoints, TuiArgs::default()),
    }
}
