//! What a saved model is — its two domains and its generators — apart from how it was trained:
//! the `model.toml` that translation, import, export and the studio read.

use super::GeneratorConfig;
use crate::data::DomainSpec;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file a model folder describes itself in, beside its checkpoint (and, for a run trained
/// here, beside `config.toml`).
pub const MODEL_FILE: &str = "model.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub domain_a: DomainSpec,
    pub domain_b: DomainSpec,
    /// The generator that translates A → B.
    pub g_ab: GeneratorConfig,
    /// The generator that translates B → A; None for a one-sided (CUT/FastCUT) model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub g_ba: Option<GeneratorConfig>,
    /// The colour gain translations of a keep-luma model apply unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translate_chroma_gain: Option<f64>,
    /// How the model was made ("cyclegan", "cut", "fastcut", "imported cyclegan", …), for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub made_by: String,
}

impl ModelSpec {
    /// `run_dir/model.toml`, or None when the folder has none (runs from before it existed).
    pub fn load_file(run_dir: &Path) -> Result<Option<Self>> {
        let path = run_dir.join(MODEL_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let spec = toml::from_str(&text).with_context(|| format!("{} is not a valid cyclestudio model description", path.display()))?;
        Ok(Some(spec))
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let text = format!("# cyclestudio model: its domains and generators\n{}", toml::to_string(self)?);
        crate::util::atomic_write(&run_dir.join(MODEL_FILE), text.as_bytes())
    }

    /// Image sides must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.g_ab.kind.size_multiple()
    }
}
