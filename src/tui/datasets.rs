//! The Datasets screen's logic: finding datasets under the datasets roots, browsing a domain's
//! images, and the form that creates a dataset (with the CLI's code, on a worker thread).

use super::app::{move_cursor, App};
use super::event::{spawn_job, JobResult};
use super::form::{complete_path, expand_home, PathKind, TextInput};
use super::preview::ShownImage;
use crate::data::create::{self, CreateOptions};
use crate::data::dataset::Check;
use crate::data::{decode_image, Dataset, DatasetSpec, ScanReport};
use crossterm::event::{KeyCode, KeyEvent};
use std::path::{Path, PathBuf};

/// A folder that looks like a dataset (it has `trainA/` and `trainB/`), opened or not.
#[derive(Clone, Debug)]
pub struct DatasetEntry {
    pub name: String,
    pub dir: PathBuf,
    /// The scanned dataset, or why it could not be opened (e.g. a broken `dataset.toml`).
    pub dataset: Result<Dataset, String>,
}

/// The datasets under each root, in root order and by name within a root. A root that is itself
/// a dataset is listed too. Roots that do not exist are skipped: the default `datasets` folder
/// appears with the first created dataset.
pub fn discover(roots: &[PathBuf]) -> Vec<DatasetEntry> {
    let is_dataset = |dir: &Path| dir.join("trainA").is_dir() && dir.join("trainB").is_dir();
    let mut found = Vec::new();
    for root in roots {
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(root) {
            Ok(entries) => entries.flatten().map(|e| e.path()).filter(|d| is_dataset(d)).collect(),
            Err(_) => continue,
        };
        dirs.sort();
        if is_dataset(root) {
            dirs.insert(0, root.clone());
        }
        found.extend(dirs.into_iter().map(|dir| DatasetEntry {
            name: dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
            dataset: Dataset::open(&dir, Check::Header).map_err(|e| format!("{e:#}")),
            dir,
        }));
    }
    found
}

/// One of a dataset's four image folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Folder {
    #[default]
    TrainA,
    TestA,
    TrainB,
    TestB,
}

impl Folder {
    pub const ALL: [Folder; 4] = [Folder::TrainA, Folder::TestA, Folder::TrainB, Folder::TestB];

    /// The folder's name in the dataset.
    pub fn dir(self) -> &'static str {
        match self {
            Folder::TrainA => "trainA",
            Folder::TestA => "testA",
            Folder::TrainB => "trainB",
            Folder::TestB => "testB",
        }
    }

    /// `trainA (gray)`: the folder and its domain's name.
    pub fn label(self, spec: &DatasetSpec) -> String {
        let domain = match self {
            Folder::TrainA | Folder::TestA => &spec.a.name,
            Folder::TrainB | Folder::TestB => &spec.b.name,
        };
        format!("{} ({domain})", self.dir())
    }

    pub fn report(self, dataset: &Dataset) -> &ScanReport {
        match self {
            Folder::TrainA => &dataset.a.train,
            Folder::TestA => &dataset.a.test,
            Folder::TrainB => &dataset.b.train,
            Folder::TestB => &dataset.b.test,
        }
    }

    fn step(self, forward: bool) -> Folder {
        let i = Folder::ALL.iter().position(|f| *f == self).unwrap_or(0);
        let n = Folder::ALL.len();
        Folder::ALL[if forward { (i + 1) % n } else { (i + n - 1) % n }]
    }
}

/// The image being previewed.
pub enum ImageView {
    Loading(PathBuf),
    Ready { path: PathBuf, image: ShownImage },
    Failed { path: PathBuf, error: String },
}

/// State of the Datasets screen.
#[derive(Default)]
pub struct DatasetsScreen {
    pub entries: Vec<DatasetEntry>,
    pub scanning: bool,
    pub selected: usize,
    /// The image list has the focus (instead of the dataset list).
    pub browsing: bool,
    pub folder: Folder,
    pub image_index: usize,
    pub image: Option<ImageView>,
    image_request: u64,
    pub create: Option<CreateForm>,
    /// The folder of a dataset to select once the next scan finds it (the one just created).
    select_after_scan: Option<PathBuf>,
    /// Dataset creations still writing files (quitting waits for them).
    pub creating: usize,
}

impl DatasetsScreen {
    pub fn selected_entry(&self) -> Option<&DatasetEntry> {
        self.entries.get(self.selected)
    }

    /// The images of the browsed folder of the selected dataset.
    pub fn browsed_images(&self) -> &[(PathBuf, (u32, u32))] {
        match self.selected_entry().map(|e| &e.dataset) {
            Some(Ok(ds)) => &self.folder.report(ds).images,
            _ => &[],
        }
    }
}

/// Which kind of dataset the form builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateKind {
    /// Grey (domain A) and colour (domain B) versions of one folder of photos.
    GreyColour,
    /// Two folders, one per domain.
    TwoFolders,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateField {
    Kind,
    Name,
    Photos,
    Paired,
    FolderA,
    FolderB,
    NameA,
    NameB,
    ChannelsA,
    ChannelsB,
    TestPercent,
    MaxSide,
}

impl CreateField {
    pub fn label(self) -> &'static str {
        match self {
            CreateField::Kind => "Kind",
            CreateField::Name => "Dataset name",
            CreateField::Photos => "Photos folder",
            CreateField::Paired => "Paired",
            CreateField::FolderA => "Folder A",
            CreateField::FolderB => "Folder B",
            CreateField::NameA => "Domain A name",
            CreateField::NameB => "Domain B name",
            CreateField::ChannelsA => "Domain A channels",
            CreateField::ChannelsB => "Domain B channels",
            CreateField::TestPercent => "Test %",
            CreateField::MaxSide => "Max side (0 keeps)",
        }
    }

    pub fn is_path(self) -> bool {
        matches!(self, CreateField::Photos | CreateField::FolderA | CreateField::FolderB)
    }

    /// Fields changed with ←/→ rather than typed.
    pub fn is_choice(self) -> bool {
        matches!(self, CreateField::Kind | CreateField::Paired | CreateField::ChannelsA | CreateField::ChannelsB)
    }
}

/// Progress of the form's create job.
#[derive(Clone, Debug, PartialEq)]
pub enum CreateStatus {
    Editing,
    Creating,
    Done(String),
    Failed(String),
}

/// The "new dataset" form.
#[derive(Clone, Debug)]
pub struct CreateForm {
    pub kind: CreateKind,
    pub focus: usize,
    pub name: TextInput,
    pub photos: TextInput,
    pub paired: bool,
    pub folder_a: TextInput,
    pub folder_b: TextInput,
    pub name_a: TextInput,
    pub name_b: TextInput,
    pub channels_a: usize,
    pub channels_b: usize,
    pub test_percent: TextInput,
    pub max_side: TextInput,
    /// Choices of the last ambiguous Tab completion.
    pub completions: Vec<String>,
    pub status: CreateStatus,
    /// The datasets root the dataset is created in.
    pub root: PathBuf,
}

impl CreateForm {
    pub fn new(root: PathBuf) -> Self {
        Self {
            kind: CreateKind::GreyColour,
            // The name is what everyone types first.
            focus: 1,
            name: TextInput::default(),
            photos: TextInput::default(),
            paired: false,
            folder_a: TextInput::default(),
            folder_b: TextInput::default(),
            name_a: TextInput::new("A"),
            name_b: TextInput::new("B"),
            channels_a: 3,
            channels_b: 3,
            test_percent: TextInput::new(CreateOptions::default().test_percent.to_string()),
            max_side: TextInput::new(CreateOptions::default().max_side.to_string()),
            completions: Vec::new(),
            status: CreateStatus::Editing,
            root,
        }
    }

    pub fn fields(&self) -> &'static [CreateField] {
        use CreateField::*;
        match self.kind {
            CreateKind::GreyColour => &[Kind, Name, Photos, Paired, TestPercent, MaxSide],
            CreateKind::TwoFolders => &[Kind, Name, FolderA, FolderB, NameA, NameB, ChannelsA, ChannelsB, TestPercent, MaxSide],
        }
    }

    pub fn focused(&self) -> CreateField {
        let fields = self.fields();
        fields[self.focus.min(fields.len() - 1)]
    }

    /// The text shown for a field.
    pub fn value(&self, field: CreateField) -> String {
        match field {
            CreateField::Kind => match self.kind {
                CreateKind::GreyColour => "grey ↔ colour from one folder of photos".into(),
                CreateKind::TwoFolders => "two folders, one per domain".into(),
            },
            CreateField::Paired => if self.paired { "yes: every photo in both domains" } else { "no: each photo in one domain" }.into(),
            CreateField::ChannelsA => channels_label(self.channels_a),
            CreateField::ChannelsB => channels_label(self.channels_b),
            text => self.text(text).map(|t| t.value.clone()).unwrap_or_default(),
        }
    }

    fn text(&self, field: CreateField) -> Option<&TextInput> {
        Some(match field {
            CreateField::Name => &self.name,
            CreateField::Photos => &self.photos,
            CreateField::FolderA => &self.folder_a,
            CreateField::FolderB => &self.folder_b,
            CreateField::NameA => &self.name_a,
            CreateField::NameB => &self.name_b,
            CreateField::TestPercent => &self.test_percent,
            CreateField::MaxSide => &self.max_side,
            _ => return None,
        })
    }

    fn text_mut(&mut self, field: CreateField) -> Option<&mut TextInput> {
        Some(match field {
            CreateField::Name => &mut self.name,
            CreateField::Photos => &mut self.photos,
            CreateField::FolderA => &mut self.folder_a,
            CreateField::FolderB => &mut self.folder_b,
            CreateField::NameA => &mut self.name_a,
            CreateField::NameB => &mut self.name_b,
            CreateField::TestPercent => &mut self.test_percent,
            CreateField::MaxSide => &mut self.max_side,
            _ => return None,
        })
    }

    fn toggle(&mut self, field: CreateField) {
        let flip_channels = |c: usize| if c == 3 { 1 } else { 3 };
        match field {
            CreateField::Kind => {
                self.kind = match self.kind {
                    CreateKind::GreyColour => CreateKind::TwoFolders,
                    CreateKind::TwoFolders => CreateKind::GreyColour,
                }
            }
            CreateField::Paired => self.paired = !self.paired,
            CreateField::ChannelsA => self.channels_a = flip_channels(self.channels_a),
            CreateField::ChannelsB => self.channels_b = flip_channels(self.channels_b),
            _ => {}
        }
    }

    fn move_focus(&mut self, forward: bool) {
        let n = self.fields().len();
        self.focus = if forward { (self.focus + 1) % n } else { (self.focus + n - 1) % n };
        self.completions.clear();
    }

    /// The work the form describes, checked enough to give clear messages before starting it.
    fn request(&self) -> Result<CreateRequest, String> {
        let name = self.name.value.trim().to_string();
        if name.is_empty() {
            return Err("give the dataset a name".into());
        }
        let number =
            |input: &TextInput, what: &str| input.value.trim().parse::<u32>().map_err(|_| format!("{what} must be a whole number"));
        let test_percent = number(&self.test_percent, "Test %")?;
        if test_percent > 100 {
            return Err("Test % must be between 0 and 100".into());
        }
        let options = CreateOptions { test_percent, max_side: number(&self.max_side, "Max side")? };
        let folder = |input: &TextInput, what: &str| {
            if input.value.trim().is_empty() {
                Err(format!("choose the {what} (Tab completes folder names)"))
            } else {
                Ok(expand_home(input.value.trim()))
            }
        };
        let source = match self.kind {
            CreateKind::GreyColour => CreateSource::GreyColour { photos: folder(&self.photos, "photos folder")?, paired: self.paired },
            CreateKind::TwoFolders => CreateSource::TwoFolders {
                dirs: [folder(&self.folder_a, "folder of domain A")?, folder(&self.folder_b, "folder of domain B")?],
                names: [self.name_a.value.trim().to_string(), self.name_b.value.trim().to_string()],
                channels: [self.channels_a, self.channels_b],
            },
        };
        Ok(CreateRequest { root: self.root.clone(), name, source, options })
    }
}

fn channels_label(channels: usize) -> String {
    if channels == 1 {
        "1 (grey)".into()
    } else {
        "3 (colour)".into()
    }
}

enum CreateSource {
    GreyColour { photos: PathBuf, paired: bool },
    TwoFolders { dirs: [PathBuf; 2], names: [String; 2], channels: [usize; 2] },
}

/// Everything the create job needs, owned so it can move to the worker thread.
struct CreateRequest {
    root: PathBuf,
    name: String,
    source: CreateSource,
    options: CreateOptions,
}

impl CreateRequest {
    fn run(self) -> anyhow::Result<String> {
        let report = match &self.source {
            CreateSource::GreyColour { photos, paired } => create::gray2color(&self.root, &self.name, photos, *paired, &self.options)?,
            CreateSource::TwoFolders { dirs, names, channels } => {
                create::from_domains(&self.root, &self.name, [&dirs[0], &dirs[1]], [&names[0], &names[1]], *channels, &self.options)?
            }
        };
        Ok(report.summary())
    }
}

impl App {
    /// Rescans every datasets root in the background.
    pub fn rescan_datasets(&mut self) {
        self.datasets.scanning = true;
        let roots = self.options.datasets.clone();
        spawn_job(&self.events, move || Ok(discover(&roots)), JobResult::DatasetsScanned);
    }

    pub(super) fn datasets_scanned(&mut self, result: Result<Vec<DatasetEntry>, String>) {
        let screen = &mut self.datasets;
        screen.scanning = false;
        match result {
            Ok(entries) => {
                // Keep the selected dataset selected, or select the one just created.
                let wanted = screen.select_after_scan.take().or_else(|| screen.selected_entry().map(|e| e.dir.clone()));
                screen.entries = entries;
                screen.selected = wanted.and_then(|dir| screen.entries.iter().position(|e| e.dir == dir)).unwrap_or(0);
                // Image lists may have changed: browsing starts again from the dataset list.
                screen.browsing = false;
                screen.image = None;
            }
            Err(e) => self.set_error(format!("scanning datasets failed: {e}")),
        }
    }

    pub(super) fn dataset_image_loaded(&mut self, request: u64, result: Result<image::DynamicImage, String>) {
        let screen = &mut self.datasets;
        if request != screen.image_request {
            return;
        }
        let Some(ImageView::Loading(path)) = screen.image.take() else { return };
        screen.image = Some(match result {
            Ok(image) => ImageView::Ready { path, image: ShownImage::new(image) },
            Err(error) => ImageView::Failed { path, error },
        });
    }

    pub(super) fn dataset_created(&mut self, result: Result<String, String>) {
        self.datasets.creating = self.datasets.creating.saturating_sub(1);
        match &result {
            Ok(summary) => {
                self.set_info(summary.lines().next().unwrap_or_default().to_string());
                self.datasets.select_after_scan = self.datasets.create.as_ref().map(|f| f.root.join(f.name.value.trim()));
                self.rescan_datasets();
            }
            Err(e) => self.set_error(format!("creating the dataset failed: {e}")),
        }
        if let Some(form) = &mut self.datasets.create {
            form.status = match result {
                Ok(summary) => CreateStatus::Done(summary),
                Err(e) => CreateStatus::Failed(e),
            };
        }
    }

    /// Whether the Datasets screen wants every key typed into a field.
    pub(super) fn datasets_capture_text(&self) -> bool {
        self.datasets.create.is_some()
    }

    pub(super) fn datasets_key(&mut self, key: KeyEvent) {
        if self.datasets.create.is_some() {
            self.create_form_key(key);
        } else if self.datasets.browsing {
            self.image_list_key(key);
        } else {
            self.dataset_list_key(key);
        }
    }

    fn dataset_list_key(&mut self, key: KeyEvent) {
        let screen = &mut self.datasets;
        if move_cursor(&mut screen.selected, screen.entries.len(), key.code) {
            return;
        }
        match (key.code, screen.selected_entry().map(|e| &e.dataset)) {
            (KeyCode::Enter, Some(Ok(_))) => {
                screen.browsing = true;
                screen.image_index = 0;
                self.load_browsed_image();
            }
            (KeyCode::Enter, Some(Err(e))) => {
                let message = e.clone();
                self.set_error(message);
            }
            _ => self.datasets_common_key(key),
        }
    }

    fn image_list_key(&mut self, key: KeyEvent) {
        let screen = &mut self.datasets;
        let before = (screen.folder, screen.image_index);
        let count = screen.browsed_images().len();
        if !move_cursor(&mut screen.image_index, count, key.code) {
            match key.code {
                KeyCode::Esc | KeyCode::Backspace => {
                    screen.browsing = false;
                    screen.image = None;
                }
                KeyCode::Left | KeyCode::Char('h') => {
                    screen.folder = screen.folder.step(false);
                    screen.image_index = 0;
                }
                KeyCode::Right | KeyCode::Char('l') => {
                    screen.folder = screen.folder.step(true);
                    screen.image_index = 0;
                }
                _ => return self.datasets_common_key(key),
            }
        }
        let screen = &self.datasets;
        if screen.browsing && before != (screen.folder, screen.image_index) {
            self.load_browsed_image();
        }
    }

    /// Keys that work both in the dataset list and in the image list.
    fn datasets_common_key(&mut self, key: KeyEvent) {
        match key.code {
            KeyCode::Char('n') => {
                let root = self.options.datasets.first().cloned().unwrap_or_else(|| PathBuf::from("datasets"));
                self.datasets.create = Some(CreateForm::new(root));
            }
            KeyCode::Char('r') => self.rescan_datasets(),
            _ => {}
        }
    }

    /// Starts loading the image under the cursor of the image list.
    fn load_browsed_image(&mut self) {
        let screen = &mut self.datasets;
        let Some((path, _)) = screen.browsed_images().get(screen.image_index).cloned() else {
            screen.image = None;
            return;
        };
        screen.image_request += 1;
        let request = screen.image_request;
        screen.image = Some(ImageView::Loading(path.clone()));
        // Decoded on a worker thread: large photos take a noticeable time.
        spawn_job(&self.events, move || decode_image(&path), move |result| JobResult::ImageLoaded { request, result });
    }

    fn create_form_key(&mut self, key: KeyEvent) {
        let Some(form) = &mut self.datasets.create else { return };
        if key.code == KeyCode::Esc {
            // A running create job still reports its result to the status line.
            self.datasets.create = None;
            return;
        }
        if form.status == CreateStatus::Creating {
            return;
        }
        let field = form.focused();
        match key.code {
            KeyCode::Up | KeyCode::BackTab => form.move_focus(false),
            KeyCode::Down => form.move_focus(true),
            KeyCode::Tab if field.is_path() => {
                if let Some(input) = form.text_mut(field) {
                    let completion = complete_path(&input.value, PathKind::Folders);
                    input.value = completion.value;
                    form.completions = completion.candidates;
                }
            }
            KeyCode::Tab => form.move_focus(true),
            KeyCode::Left | KeyCode::Right | KeyCode::Char(' ') if field.is_choice() => {
                form.toggle(field);
                // Switching the kind changes the field list; stay on the kind.
                form.focus = form.fields().iter().position(|f| *f == field).unwrap_or(0);
            }
            KeyCode::Enter => match form.request() {
                Ok(request) => {
                    form.status = CreateStatus::Creating;
                    form.completions.clear();
                    self.datasets.creating += 1;
                    spawn_job(&self.events, move || request.run(), JobResult::DatasetCreated);
                }
                Err(e) => form.status = CreateStatus::Failed(e),
            },
            _ => {
                let digits_only = matches!(field, CreateField::TestPercent | CreateField::MaxSide);
                if let Some(input) = form.text_mut(field) {
                    if input.edit(&key, |c| !digits_only || c.is_ascii_digit()) {
                        form.completions.clear();
                        form.status = CreateStatus::Editing;
                    }
                }
            }
        }
    }
}
