//! Text entry for the studio's forms: a one-line input, and path completion on Tab.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::path::PathBuf;

/// A one-line text field edited at its end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextInput {
    pub value: String,
}

impl TextInput {
    pub fn new(value: impl Into<String>) -> Self {
        Self { value: value.into() }
    }

    /// Applies an editing key (characters, Backspace, Ctrl-U clear, Ctrl-W delete word) and says
    /// whether it was one. `accept` filters typed characters (e.g. digits only).
    pub fn edit(&mut self, key: &KeyEvent, accept: impl Fn(char) -> bool) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('u') if ctrl => self.value.clear(),
            KeyCode::Char('w') if ctrl => {
                let trimmed = self.value.trim_end_matches(['/', ' ']);
                let cut = trimmed.rfind(['/', ' ']).map_or(0, |i| i + 1);
                self.value.truncate(cut);
            }
            KeyCode::Char(c) if !ctrl => {
                if accept(c) {
                    self.value.push(c);
                }
            }
            KeyCode::Backspace => {
                self.value.pop();
            }
            _ => return false,
        }
        true
    }
}

/// What may be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Folders,
    FoldersAndFiles,
}

/// The result of completing a path: the new text, and the choices when it is ambiguous.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub value: String,
    pub candidates: Vec<String>,
}

/// `~` or `~/…` expanded with `$HOME`; any other text as a path.
pub fn expand_home(text: &str) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    if text == "~" {
        if let Some(h) = home() {
            return h;
        }
    } else if let Some(rest) = text.strip_prefix("~/") {
        if let Some(h) = home() {
            return h.join(rest);
        }
    }
    PathBuf::from(text)
}

/// Completes the last component of `input` like a shell: a unique match is completed (folders
/// get a trailing `/`), several matches are completed to their common prefix and listed. Hidden
/// entries are offered only when the typed part starts with a dot.
pub fn complete_path(input: &str, kind: PathKind) -> Completion {
    if input == "~" {
        return Completion { value: "~/".into(), candidates: Vec::new() };
    }
    let (dir_text, partial) = match input.rfind('/') {
        Some(i) => input.split_at(i + 1),
        None => ("", input),
    };
    let dir = if dir_text.is_empty() { PathBuf::from(".") } else { expand_home(dir_text) };
    let unchanged = Completion { value: input.to_string(), candidates: Vec::new() };
    let Ok(entries) = std::fs::read_dir(&dir) else { return unchanged };
    let mut matches: Vec<(String, bool)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if !name.starts_with(partial) || (name.starts_with('.') && !partial.starts_with('.')) {
                return None;
            }
            // is_dir follows symbolic links, so a link to a folder completes like a folder.
            let is_dir = entry.path().is_dir();
            (is_dir || kind == PathKind::FoldersAndFiles).then_some((name, is_dir))
        })
        .collect();
    matches.sort();
    match matches.as_slice() {
        [] => unchanged,
        [(name, is_dir)] => Completion { value: format!("{dir_text}{name}{}", if *is_dir { "/" } else { "" }), candidates: Vec::new() },
        _ => {
            let names: Vec<&str> = matches.iter().map(|(n, _)| n.as_str()).collect();
            Completion {
                value: format!("{dir_text}{}", common_prefix(&names)),
                candidates: matches.iter().map(|(n, d)| if *d { format!("{n}/") } else { n.clone() }).collect(),
            }
        }
    }
}

/// The longest prefix (on character boundaries) shared by all `words`.
fn common_prefix<'a>(words: &[&'a str]) -> &'a str {
    let Some((first, rest)) = words.split_first() else { return "" };
    let mut end = first.len();
    for word in rest {
        end = first.char_indices().zip(word.chars()).find(|((_, a), b)| a != b).map_or(end.min(word.len()), |((i, _), _)| i.min(end));
    }
    &first[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_respects_characters() {
        assert_eq!(common_prefix(&["photos", "photo_b", "phone"]), "pho");
        assert_eq!(common_prefix(&["été", "étang"]), "ét");
        assert_eq!(common_prefix(&["abc", "ab"]), "ab");
        assert_eq!(common_prefix(&["same", "same"]), "same");
    }

    #[test]
    fn completes_folders_and_lists_choices() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["photos_a", "photos_b", "zebra", ".hidden"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("photos.txt"), "x").unwrap();
        let base = format!("{}/", tmp.path().display());
        let c = complete_path(&format!("{base}ph"), PathKind::Folders);
        assert_eq!(c.value, format!("{base}photos_"));
        assert_eq!(c.candidates, vec!["photos_a/", "photos_b/"]);
        let c = complete_path(&format!("{base}z"), PathKind::Folders);
        assert_eq!((c.value, c.candidates.len()), (format!("{base}zebra/"), 0));
        let c = complete_path(&format!("{base}photos."), PathKind::FoldersAndFiles);
        assert_eq!(c.value, format!("{base}photos.txt"));
        let c = complete_path(&format!("{base}."), PathKind::Folders);
        assert_eq!(c.value, format!("{base}.hidden/"));
        let c = complete_path(&format!("{base}nothing"), PathKind::Folders);
        assert_eq!(c.value, format!("{base}nothing"));
    }
}
