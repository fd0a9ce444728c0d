//! Training: the run configuration, the CycleGAN and CUT optimisation steps (losses, Adam, image
//! pool, PatchNCE), checkpoints with exact resume, and the loop shared by the CLI and the studio.

mod adam;
mod config;
mod cut;
mod lock;
mod method;
pub mod patchnce;
mod pool;
pub mod request;
mod run;
mod trainer;
pub mod validation;

pub use adam::Adam;
pub use config::{GanLoss, Method, NceConfig, PairedLoss, Schedule, TrainConfig, CONFIG_FILE, DEFAULT_LAMBDA_PAIRED, DEFAULT_LR};
pub use cut::{CutDraws, CutTrainer, CUT_NETWORKS};
pub use method::MethodTrainer;
pub use lock::{is_being_trained, RunLock, LOCK_FILE};
pub use pool::ImagePool;
pub use run::{cuda_devices, grid, open_device, read_loss_log, run_training, sample_path, sample_step, LOG_FILE, SAMPLES_DIR, RunControl, RunOptions, RunOutcome, StepReport, TrainEvent};
pub use trainer::{Divergence, Losses, Trainer, NETWORKS};
pub use validation::{ValidationConfig, ValidationScores};
