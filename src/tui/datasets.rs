//! The Datasets screen: its state, its keys and what they do: browsing the datasets found under
//! the datasets roots and a domain's images, and the form that creates a dataset (with the CLI's
//! code, on a worker thread).

use super::action::Action;
use super::dataset_scan::{discover, DatasetEntry};
use super::event::{spawn_job, AppEvent, JobResult};
use super::form::{complete_path, expand_home, PathKind, TextInput};
use super::keys::{self, move_cursor, Hint, KeyBinding, LIST_MOVES};
use super::preview::ShownImage;
use crate::data::create::{self, CreateOptions};
use crate::data::{decode_image, Dataset, DatasetSpec, ScanReport};
use crossterm::event::{KeyCode, KeyEvent};
use std::path::PathBuf;
use std::sync::mpsc::Sender;

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


/// What the Datasets screen is doing, which decides what its keys do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The dataset list has the focus.
    List,
    /// The image list of the selected dataset has the focus.
    Browsing,
    /// The "new dataset" form is open.
    Form,
    /// The form's dataset is being written.
    Creating,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Move,
    Browse,
    PreviousFolder,
    NextFolder,
    Back,
    New,
    Rescan,
    PreviousField,
    NextField,
    /// Completes a folder field, or goes to the next field.
    Complete,
    /// Changes a choice; in a text field the key is typed.
    Choose,
    Create,
    Close,
    /// Typed into the focused field (unbound keys in the form; Ctrl-U, Ctrl-W).
    Type,
}

/// The Datasets screen's keys.
pub const KEYS: &[KeyBinding<Command, Mode>] = {
    use Command::*;
    use KeyCode::{BackTab, Backspace, Char, Down, Enter, Esc, Left, Right, Tab, Up};
    use Mode::*;
    &[
        KeyBinding { keys: "↑ ↓", codes: LIST_MOVES, help: "", hint: Some(("↑↓", "select")), modes: &[List], command: Move },
        KeyBinding { keys: "↑ ↓", codes: LIST_MOVES, help: "", hint: Some(("↑↓", "image")), modes: &[Browsing], command: Move },
        KeyBinding { keys: "↑ ↓", codes: &[Up, BackTab], help: "", hint: Some(("↑↓", "field")), modes: &[Form], command: PreviousField },
        KeyBinding { keys: "↓", codes: &[Down], help: "", hint: None, modes: &[Form], command: NextField },
        KeyBinding {
            keys: "Enter",
            codes: &[Enter],
            help: "browse the selected dataset's images",
            hint: Some(("Enter", "browse images")),
            modes: &[List],
            command: Browse,
        },
        KeyBinding {
            keys: "← → or h l",
            codes: &[Left, Char('h')],
            help: "previous / next folder (trainA, testA, trainB, testB)",
            hint: Some(("←→", "folder")),
            modes: &[Browsing],
            command: PreviousFolder,
        },
        KeyBinding { keys: "→ or l", codes: &[Right, Char('l')], help: "", hint: None, modes: &[Browsing], command: NextFolder },
        KeyBinding { keys: "Esc", codes: &[Esc, Backspace], help: "", hint: Some(("Esc", "back")), modes: &[Browsing], command: Back },
        KeyBinding {
            keys: "n",
            codes: &[Char('n')],
            help: "new dataset: grey↔colour from a photo folder, or two folders",
            hint: Some(("n", "new dataset")),
            modes: &[List, Browsing],
            command: New,
        },
        KeyBinding {
            keys: "Tab (in a folder field)",
            codes: &[Tab],
            help: "complete the folder name",
            hint: Some(("Tab", "complete folder")),
            modes: &[Form],
            command: Complete,
        },
        KeyBinding {
            keys: "← → / Space (in the form)",
            codes: &[Left, Right, Char(' ')],
            help: "change a choice",
            hint: Some(("←→", "choose")),
            modes: &[Form],
            command: Choose,
        },
        KeyBinding { keys: "Enter", codes: &[Enter], help: "", hint: Some(("Enter", "create")), modes: &[Form], command: Create },
        KeyBinding { keys: "Esc", codes: &[Esc], help: "", hint: Some(("Esc", "close")), modes: &[Form], command: Close },
        // A running create job still reports its result to the status line.
        KeyBinding { keys: "Esc", codes: &[Esc], help: "", hint: Some(("Esc", "close (creation goes on)")), modes: &[Creating], command: Close },
        KeyBinding {
            keys: "r",
            codes: &[Char('r')],
            help: "rescan the datasets folders",
            hint: Some(("r", "rescan")),
            modes: &[List, Browsing],
            command: Rescan,
        },
    ]
};

impl DatasetsScreen {
    pub fn mode(&self) -> Mode {
        match &self.create {
            Some(form) if form.status == CreateStatus::Creating => Mode::Creating,
            Some(_) => Mode::Form,
            None if self.browsing => Mode::Browsing,
            None => Mode::List,
        }
    }

    /// Whether the screen wants every key typed into a field.
    pub fn captures_text(&self) -> bool {
        self.create.is_some()
    }

    /// The footer hints for the keys active now.
    pub fn hints(&self) -> Vec<Hint> {
        keys::hints(KEYS, self.mode()).collect()
    }

    /// Rescans every datasets root in the background.
    pub fn rescan(&mut self, roots: &[PathBuf], events: &Sender<AppEvent>) {
        self.scanning = true;
        let roots = roots.to_vec();
        spawn_job(events, move || Ok(discover(&roots)), JobResult::DatasetsScanned);
    }

    pub fn scanned(&mut self, result: Result<Vec<DatasetEntry>, String>) -> Vec<Action> {
        self.scanning = false;
        match result {
            Ok(entries) => {
                // Keep the selected dataset selected, or select the one just created.
                let wanted = self.select_after_scan.take().or_else(|| self.selected_entry().map(|e| e.dir.clone()));
                self.entries = entries;
                self.selected = wanted.and_then(|dir| self.entries.iter().position(|e| e.dir == dir)).unwrap_or(0);
                // Image lists may have changed: browsing starts again from the dataset list.
                self.browsing = false;
                self.image = None;
                vec![]
            }
            Err(e) => vec![Action::Error(format!("scanning datasets failed: {e}"))],
        }
    }

    pub fn image_loaded(&mut self, request: u64, result: Result<image::DynamicImage, String>) {
        if request != self.image_request {
            return;
        }
        let Some(ImageView::Loading(path)) = self.image.take() else { return };
        self.image = Some(match result {
            Ok(image) => ImageView::Ready { path, image: ShownImage::new(image) },
            Err(error) => ImageView::Failed { path, error },
        });
    }

    pub fn created(&mut self, result: Result<String, String>, roots: &[PathBuf], events: &Sender<AppEvent>) -> Vec<Action> {
        self.creating = self.creating.saturating_sub(1);
        let action = match &result {
            Ok(summary) => {
                self.select_after_scan = self.create.as_ref().map(|f| f.root.join(f.name.value.trim()));
                self.rescan(roots, events);
                Action::Info(summary.lines().next().unwrap_or_default().to_string())
            }
            Err(e) => Action::Error(format!("creating the dataset failed: {e}")),
        };
        if let Some(form) = &mut self.create {
            form.status = match result {
                Ok(summary) => CreateStatus::Done(summary),
                Err(e) => CreateStatus::Failed(e),
            };
        }
        vec![action]
    }

    pub fn key(&mut self, key: KeyEvent, roots: &[PathBuf], events: &Sender<AppEvent>) -> Vec<Action> {
        let mode = self.mode();
        let command = keys::command(KEYS, mode, key.code);
        match mode {
            Mode::Form | Mode::Creating => {
                self.create_form_key(command, key, events);
                vec![]
            }
            Mode::Browsing => self.image_list_key(command, key.code, roots, events),
            Mode::List => self.dataset_list_key(command, key.code, roots, events),
        }
    }

    fn dataset_list_key(&mut self, command: Option<Command>, code: KeyCode, roots: &[PathBuf], events: &Sender<AppEvent>) -> Vec<Action> {
        match command {
            Some(Command::Move) => {
                move_cursor(&mut self.selected, self.entries.len(), code);
            }
            Some(Command::Browse) => match self.selected_entry().map(|e| &e.dataset) {
                Some(Ok(_)) => {
                    self.browsing = true;
                    self.image_index = 0;
                    self.load_browsed_image(events);
                }
                Some(Err(e)) => return vec![Action::Error(e.clone())],
                None => {}
            },
            Some(command) => self.common_command(command, roots, events),
            None => {}
        }
        vec![]
    }

    fn image_list_key(&mut self, command: Option<Command>, code: KeyCode, roots: &[PathBuf], events: &Sender<AppEvent>) -> Vec<Action> {
        let before = (self.folder, self.image_index);
        match command {
            Some(Command::Move) => {
                let count = self.browsed_images().len();
                move_cursor(&mut self.image_index, count, code);
            }
            Some(Command::Back) => {
                self.browsing = false;
                self.image = None;
            }
            Some(command @ (Command::PreviousFolder | Command::NextFolder)) => {
                self.folder = self.folder.step(command == Command::NextFolder);
                self.image_index = 0;
            }
            Some(command) => self.common_command(command, roots, events),
            None => {}
        }
        if self.browsing && before != (self.folder, self.image_index) {
            self.load_browsed_image(events);
        }
        vec![]
    }

    /// Commands of both the dataset list and the image list.
    fn common_command(&mut self, command: Command, roots: &[PathBuf], events: &Sender<AppEvent>) {
        match command {
            Command::New => {
                let root = roots.first().cloned().unwrap_or_else(|| PathBuf::from(crate::data::DEFAULT_DATASETS_DIR));
                self.create = Some(CreateForm::new(root));
            }
            Command::Rescan => self.rescan(roots, events),
            _ => {}
        }
    }

    /// Starts loading the image under the cursor of the image list.
    fn load_browsed_image(&mut self, events: &Sender<AppEvent>) {
        let Some((path, _)) = self.browsed_images().get(self.image_index).cloned() else {
            self.image = None;
            return;
        };
        self.image_request += 1;
        let request = self.image_request;
        self.image = Some(ImageView::Loading(path.clone()));
        // Decoded on a worker thread: large photos take a noticeable time.
        spawn_job(events, move || decode_image(&path), move |result| JobResult::ImageLoaded { request, result });
    }

    fn create_form_key(&mut self, command: Option<Command>, key: KeyEvent, events: &Sender<AppEvent>) {
        if command == Some(Command::Close) {
            self.create = None;
            return;
        }
        let Some(form) = &mut self.create else { return };
        if form.status == CreateStatus::Creating {
            return;
        }
        let field = form.focused();
        match command.unwrap_or(Command::Type) {
            Command::PreviousField => form.move_focus(false),
            Command::NextField => form.move_focus(true),
            Command::Complete if field.is_path() => {
                if let Some(input) = form.text_mut(field) {
                    let completion = complete_path(&input.value, PathKind::Folders);
                    input.value = completion.value;
                    form.completions = completion.candidates;
                }
            }
            Command::Complete => form.move_focus(true),
            Command::Choose if field.is_choice() => {
                form.toggle(field);
                // Switching the kind changes the field list; stay on the kind.
                form.focus = form.fields().iter().position(|f| *f == field).unwrap_or(0);
            }
            Command::Create => match form.request() {
                Ok(request) => {
                    form.status = CreateStatus::Creating;
                    form.completions.clear();
                    self.creating += 1;
                    spawn_job(events, move || request.run(), JobResult::DatasetCreated);
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
