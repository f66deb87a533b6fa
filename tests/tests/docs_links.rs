//! The README and the documents in `docs/` link to each other and to files of the repository.
//! A file moved or a heading renamed would leave a link that leads nowhere, and nobody notices
//! until a reader follows it. This test reads every such Markdown file, parses its links and
//! images as Markdown (not with a pattern, so code blocks and inline code are not mistaken
//! for links), and checks that each relative link reaches a file inside the repository and,
//! when it names a `#heading`, that the heading exists.
//!
//! It needs no service: it only reads files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use pulldown_cmark::{BrokenLink, Event, LinkType, Options, Parser, Tag, TagEnd};

/// What the checker asks of a repository. Paths are relative to its root, `/`-separated. The
/// real run reads the disk; the self-check below reads Markdown held in memory, so that it
/// can prove the checker fails on broken links without touching any file.
trait Repo {
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &str) -> bool;
    /// The text of the file at `path`, if it is one.
    fn read(&self, path: &str) -> Option<String>;
}

struct Disk {
    root: PathBuf,
}

impl Repo for Disk {
    fn exists(&self, path: &str) -> bool {
        self.root.join(path).exists()
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(path)).ok()
    }
}

/// Files held in memory; a directory exists when some file lies under it.
struct Memory(BTreeMap<String, String>);

impl Repo for Memory {
    fn exists(&self, path: &str) -> bool {
        let dir = format!("{}/", path.trim_end_matches('/'));
        self.0.contains_key(path) || self.0.keys().any(|file| file.starts_with(&dir))
    }

    fn read(&self, path: &str) -> Option<String> {
        self.0.get(path).cloned()
    }
}

/// The Markdown that GitHub renders: tables and strikethrough change what is a link (a `|`
/// ends a table cell), so the parser must know them too.
fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

/// One link or image of a document: its destination and the line it is on.
struct Link {
    line: usize,
    dest: String,
}

/// What one document holds: its links, the anchors of its headings, and the references
/// (`[text][label]`) whose label is defined nowhere, which render as plain text.
struct Parsed {
    links: Vec<Link>,
    anchors: HashSet<String>,
    undefined: Vec<Link>,
}

fn parse(text: &str) -> Parsed {
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut undefined = Vec::new();
    // A shortcut `[word]` without a definition is ordinary prose (`[exhausted]`, say); a full
    // `[text][label]` or collapsed `[label][]` reference was meant as a link.
    let callback = |broken: BrokenLink<'_>| {
        if matches!(broken.link_type, LinkType::Reference | LinkType::Collapsed) {
            undefined.push(Link {
                line: line_of(broken.span.start),
                dest: format!("[{}]", broken.reference),
            });
        }
        None
    };
    let events: Vec<_> = Parser::new_with_broken_link_callback(text, options(), Some(callback))
        .into_offset_iter()
        .collect();

    let mut links = Vec::new();
    let mut anchors = HashSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut heading: Option<String> = None;
    for (event, range) in events {
        match event {
            // Links and images alike; `<someone@example.org>` is an address, not a path.
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                ..
            })
            | Event::Start(Tag::Image {
                link_type,
                dest_url,
                ..
            }) if link_type != LinkType::Email => {
                links.push(Link {
                    line: line_of(range.start),
                    dest: dest_url.to_string(),
                });
            }
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            // GitHub builds a heading's anchor from its text, inline code included.
            Event::Text(part) | Event::Code(part) => {
                if let Some(text) = heading.as_mut() {
                    text.push_str(&part);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(text) = heading.take() {
                    anchors.insert(unique_slug(&slug(&text), &mut seen));
                }
            }
            _ => {}
        }
    }
    Parsed {
        links,
        anchors,
        undefined,
    }
}

/// A heading's anchor as GitHub makes it: lowercase, punctuation dropped except `-` and `_`,
/// each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// GitHub numbers repeated headings: the second `Notes` is `#notes-1`, the third `#notes-2`.
/// A heading whose anchor is taken already counts on, as `Notes 1` after two `Notes` gives
/// `#notes-1-1`.
fn unique_slug(slug: &str, seen: &mut HashMap<String, usize>) -> String {
    let mut candidate = slug.to_owned();
    while seen.contains_key(&candidate) {
        // The loop is entered only when `slug` itself is taken, so its count exists.
        let count = seen.entry(slug.to_owned()).or_default();
        *count += 1;
        candidate = format!("{slug}-{count}");
    }
    seen.insert(candidate.clone(), 0);
    candidate
}

/// `scheme:` at the start of a destination (`https:`, `mailto:`, `file:`, …).
fn scheme(dest: &str) -> Option<&str> {
    let (head, _) = dest.split_once(':')?;
    let mut chars = head.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (starts_with_letter && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some(head)
}

/// The repository path that `dest` names from the document at `source`, or why it names none.
/// A leading `/` starts at the repository's root, as GitHub reads it.
fn resolve(source: &str, dest: &str) -> Result<String, &'static str> {
    let mut parts: Vec<&str> = if dest.starts_with('/') {
        Vec::new()
    } else {
        source.split('/').collect()
    };
    if !dest.starts_with('/') {
        parts.pop(); // the document's own name: links are relative to its directory
    }
    for part in dest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("leads outside the repository");
                }
            }
            name => parts.push(name),
        }
    }
    Ok(parts.join("/"))
}

/// Every broken link of `sources`, as `file:line: destination: why`.
fn check(repo: &impl Repo, sources: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    // Anchors of each Markdown file linked to, parsed once; `None` when it cannot be read.
    let mut anchors: HashMap<String, Option<HashSet<String>>> = HashMap::new();
    let mut anchors_of = |path: &str| -> Option<HashSet<String>> {
        anchors
            .entry(path.to_owned())
            .or_insert_with(|| repo.read(path).map(|text| parse(&text).anchors))
            .clone()
    };

    for source in sources {
        let Some(text) = repo.read(source) else {
            problems.push(format!("{source}: cannot be read"));
            continue;
        };
        let parsed = parse(&text);
        for link in &parsed.undefined {
            problems.push(format!(
                "{source}:{}: {}: the reference is defined nowhere",
                link.line, link.dest
            ));
        }
        for Link { line, dest } in &parsed.links {
            let mut problem =
                |why: String| problems.push(format!("{source}:{line}: {dest}: {why}"));
            match scheme(dest) {
                Some("http" | "https" | "mailto") => continue,
                // A link such as `file:///home/…` works on one machine only.
                Some(other) => {
                    problem(format!("`{other}:` links lead outside the repository"));
                    continue;
                }
                None => {}
            }
            let (path, fragment) = dest.split_once('#').unwrap_or((dest, ""));
            // `%20` and friends back to text, as a browser reads a link.
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let path = decode(path.split('?').next().unwrap_or(""));
            let fragment = decode(fragment);
            if path.is_empty() && fragment.is_empty() {
                problem("the link is empty".into());
                continue;
            }
            let target = if path.is_empty() {
                source.clone()
            } else {
                match resolve(source, &path) {
                    Ok(target) => target,
                    Err(why) => {
                        problem(why.into());
                        continue;
                    }
                }
            };
            if !repo.exists(&target) {
                problem(format!("no file {target}"));
                continue;
            }
            // Only Markdown has headings to check; `main.rs#L10` and the like are left alone.
            if fragment.is_empty() || !target.to_ascii_lowercase().ends_with(".md") {
                continue;
            }
            match anchors_of(&target) {
                Some(found) if found.contains(&fragment) => {}
                Some(_) => problem(format!("no heading #{fragment} in {target}")),
                None => problem(format!("{target} cannot be read")),
            }
        }
    }
    problems
}

/// The repository's root: this crate is `tests/` inside it.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies inside the repository")
        .to_path_buf()
}

/// `README.md` and every `.md` under `docs/`, relative to the root, sorted.
fn documents(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                let relative = path.strip_prefix(root).expect("under the root");
                let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    let mut found = vec!["README.md".to_owned()];
    walk(root, &root.join("docs"), &mut found);
    found.sort();
    found
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let root = repo_root();
    let sources = documents(&root);
    // If the file list came back short (a wrong root, say), an empty check would pass.
    for expected in ["README.md", "docs/design.md"] {
        assert!(
            sources.iter().any(|s| s == expected),
            "{expected} is not among the files checked: {sources:?}"
        );
    }
    let problems = check(&Disk { root }, &sources);
    assert!(
        problems.is_empty(),
        "{} broken link(s) in {} file(s):\n{}",
        problems.len(),
        sources.len(),
        problems.join("\n")
    );
}

/// The checker itself, on Markdown held in memory: a test that finds nothing broken proves
/// little unless the checker is known to find broken links when there are some.
#[test]
fn the_checker_finds_broken_links_and_anchors() {
    let readme = "\
# Title

## Set-up: two commands

[design](docs/design.md) and [its crash cases](docs/design.md#the-batchers-crash-cases),
[back up](#set-up-two-commands), [a folder](docs/), ![a picture](docs/perf/a.svg),
[the web](https://example.org/x#y), [mail](mailto:someone@example.org), <https://example.org>.

[gone](docs/missing.md) and [no such part](docs/design.md#no-such-part) and [here](#nowhere).
![lost picture](docs/perf/lost.svg) [outside](../shared/notes.md) [machine](file:///tmp/x.md)
[undefined][nolabel]

`[not a link](nowhere.md)` and, in a block:

```
[not a link either](nowhere.md)
```
";
    let design = "\
# Design

## The batcher's crash cases

[up](../README.md#set-up-two-commands) [deep](../../etc/passwd)

## Notes

## Notes
[second notes](#notes-1)
";
    let repo = Memory(BTreeMap::from([
        ("README.md".to_owned(), readme.to_owned()),
        ("docs/design.md".to_owned(), design.to_owned()),
        ("docs/perf/a.svg".to_owned(), "<svg/>".to_owned()),
    ]));
    let sources = ["README.md".to_owned(), "docs/design.md".to_owned()];
    let mut problems = check(&repo, &sources);
    problems.sort();
    let mut expected = vec![
        "README.md:9: docs/missing.md: no file docs/missing.md",
        "README.md:9: docs/design.md#no-such-part: no heading #no-such-part in docs/design.md",
        "README.md:9: #nowhere: no heading #nowhere in README.md",
        "README.md:10: docs/perf/lost.svg: no file docs/perf/lost.svg",
        "README.md:10: ../shared/notes.md: leads outside the repository",
        "README.md:10: file:///tmp/x.md: `file:` links lead outside the repository",
        "README.md:11: [nolabel]: the reference is defined nowhere",
        "docs/design.md:5: ../../etc/passwd: leads outside the repository",
    ];
    expected.sort();
    assert_eq!(problems, expected);
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(slug("Set-up: two commands"), "set-up-two-commands");
    assert_eq!(
        slug("The batcher's crash cases"),
        "the-batchers-crash-cases"
    );
    assert_eq!(slug("1. The Redis window"), "1-the-redis-window");
    assert_eq!(slug("POST /v1/ai/events"), "post-v1aievents");
    assert_eq!(slug("snake_case and `code`"), "snake_case-and-code");
    assert_eq!(
        slug("What is checked, and what is not"),
        "what-is-checked-and-what-is-not"
    );
    assert_eq!(slug("Größe (ß)"), "größe-ß");

    let anchors = parse("# Notes\n## Notes\n### Notes\n## Notes 1\n").anchors;
    let expected: HashSet<String> = ["notes", "notes-1", "notes-2", "notes-1-1"]
        .map(String::from)
        .into();
    assert_eq!(anchors, expected);
}
