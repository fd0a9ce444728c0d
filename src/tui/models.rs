//! Models for the Translate screen and the work done with them off the UI thread: loading a run's
//! (or the built-in) generators with test images to offer, translating a file, and saving the
//! result as a new PNG that never replaces an existing file.

use crate::data::dataset::Check;
use crate::data::{decode_image, Dataset};
use crate::train::request::DEFAULT_DEVICE;
use crate::translate::{ModelSource, Translator};
use anyhow::{bail, Context, Result};
use image::DynamicImage;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The name the models list gives the grey→colour model built into cyclestudio.
pub const BUILTIN_NAME: &str = "built-in grey→colour";

/// A test image of the model's dataset and the direction it is translated in.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub path: PathBuf,
    pub from: String,
    pub to: String,
}

/// A run's generators, loaded, with the test images of its dataset.
pub struct LoadedModel {
    pub run_name: String,
    pub translator: Arc<Translator>,
    pub images: Vec<TestImage>,
    /// Why there are no test images to choose from, if there are none.
    pub images_note: Option<String>,
    /// Where translations of dataset images are saved (`<folder>/translations/`): the run's
    /// folder, or `<checkpoints>/built-in` for the built-in model.
    pub save_dir: PathBuf,
}

/// One finished translation.
pub struct Translation {
    pub source: PathBuf,
    pub target: String,
    /// Where `s` saves it (see [`output_path`]), decided off the UI thread.
    pub save_to: PathBuf,
    pub input: DynamicImage,
    pub output: DynamicImage,
    pub seconds: f64,
}


/// The test images of `dataset` that `translator` can translate: those of a domain whose
/// name is one of the model's source domains, going to the model's other domain.
fn test_images(translator: &Translator, dataset: &Dataset) -> Vec<TestImage> {
    let [a, b] = translator.domains();
    let targets = translator.targets();
    let mut images = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        let Some(domain) = [&dataset.a, &dataset.b].into_iter().find(|d| d.spec.name == from) else { continue };
        if targets.contains(&to) {
            images.extend(domain.test.images.iter().map(|(path, _)| TestImage { path: path.clone(), from: from.to_string(), to: to.to_string() }));
        }
    }
    images
}

/// Loads a model (on its training device, or the CPU when that is unavailable) and lists the
/// test images of its dataset; when that dataset is not here, those of the studio's datasets
/// (`others`) with the model's domains.
pub fn load_model(name: String, source: ModelSource, device: String, others: Vec<PathBuf>, save_dir: PathBuf) -> Result<LoadedModel> {
    let translator = match Translator::open(&source, &device) {
        Err(_) if device != DEFAULT_DEVICE => Translator::open(&source, DEFAULT_DEVICE)?,
        loaded => loaded?,
    };
    // Imported models have no dataset: the studio's datasets with their domains serve then.
    let own = &translator.dataset.clone().unwrap_or_default();
    let (images, images_note) = match Dataset::open(own, Check::Header) {
        Ok(dataset) => {
            let images = test_images(&translator, &dataset);
            let note = images.is_empty().then(|| format!("{} has no test images: press o to open any image", dataset.root.display()));
            (images, note)
        }
        Err(_) => {
            let mut images = Vec::new();
            let mut used = Vec::new();
            for dir in others.iter().filter(|d| *d != own) {
                if let Ok(dataset) = Dataset::open(dir, Check::Header) {
                    let found = test_images(&translator, &dataset);
                    if !found.is_empty() {
                        used.push(dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()));
                        images.extend(found);
                    }
                }
            }
            let note = if images.is_empty() {
                format!("the model's dataset {} is not here and no other dataset has its domains: press o to open any image", own.display())
            } else {
                format!("from {}; {} is not here", used.join(", "), own.display())
            };
            (images, Some(note))
        }
    };
    Ok(LoadedModel { run_name: name, translator: Arc::new(translator), images, images_note, save_dir })
}

/// Translates `source` to `target`, telling `progress` how a tiled translation advances.
pub fn translate_file(translator: &Translator, save_dir: &Path, source: PathBuf, target: String, progress: crate::translate::TileProgress) -> Result<Translation> {
    let input = decode_image(&source)?;
    let started = Instant::now();
    let output = translator.translate_with_progress(&target, &input, progress)?;
    let save_to = output_path(&source, &target, save_dir);
    Ok(Translation { source, target, save_to, input, output, seconds: started.elapsed().as_secs_f64() })
}

/// Where a translation of `source` into `target` is saved: `<stem>.<target>.png` beside it, or in
/// the model's `translations/` folder when the source is a dataset image (saved beside it, the
/// result would be scanned as one more image of that domain).
pub fn output_path(source: &Path, target: &str, model_dir: &Path) -> PathBuf {
    let beside = crate::translate::default_output_path(source, target);
    if crate::translate::inside_dataset(source) {
        model_dir.join("translations").join(beside.file_name().unwrap_or_default())
    } else {
        beside
    }
}

/// Writes `image` as a new PNG at `path`; an existing file is an error, never replaced.
pub fn save_new_png(image: &DynamicImage, path: PathBuf) -> Result<PathBuf> {
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).context("cannot encode the translation as PNG")?;
    // create_new makes "does it exist?" and "create it" one step, so nothing is ever overwritten.
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!("{} already exists; it was left as it is", path.display()),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    if let Err(e) = file.write_all(png.get_ref()).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&path);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_beside_the_input_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("horse.jpg");
        let out = output_path(&source, "zebra", &tmp.path().join("model"));
        assert_eq!(out, tmp.path().join("horse.zebra.png"));
        // A dataset image: the translation goes to the model's folder, not into the dataset.
        std::fs::create_dir_all(tmp.path().join("ds/trainA")).unwrap();
        std::fs::create_dir_all(tmp.path().join("ds/trainB")).unwrap();
        let in_ds = tmp.path().join("ds/testA/x.png");
        assert_eq!(output_path(&in_ds, "zebra", &tmp.path().join("model")), tmp.path().join("model/translations/x.zebra.png"));
        let image = DynamicImage::new_rgb8(4, 4);
        assert_eq!(save_new_png(&image, out.clone()).unwrap(), out);
        let err = save_new_png(&image, out.clone()).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    }
}
