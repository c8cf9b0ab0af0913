//! Generated repositories: deterministic content (a seeded PRNG), text files of realistic,
//! log-normally distributed sizes in nested directories, committed through `git fast-import`.
//!
//! May not: use randomness that is not seeded; write outside the directory it is given.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::proc;

/// The command agent every unit uses: it prints when it starts, appends a line to each file
/// its task lists after `EDIT `, creates the files an `ADD DIR COUNT` line asks for (100 a
/// directory), and prints when it is done. Timestamps are nanoseconds on the clock the host
/// shares.
const AGENT: &str = r#"echo "bench-agent-start $(date +%s%N)"
task="${TMPDIR:-/tmp}/bench-task"; cat > "$task"
grep '^EDIT ' "$task" | cut -c6- | while IFS= read -r f; do echo '# edited by the bench agent' >> "$f"; done
grep '^ADD ' "$task" | while read -r _ dir n; do i=0; while [ "$i" -lt "$n" ]; do d="$dir/d$((i / 100))"; [ -d "$d" ] || mkdir -p "$d"; echo "generated file $i" > "$d/f$i.txt"; i=$((i + 1)); done; done
echo "bench-agent-end $(date +%s%N)""#;

/// The one check: prints when it starts (its own work is that `date`).
pub const CHECK: &str = "date +%s%N";

/// The pinned wheels of the worktree baseline (pure Python, small).
pub const REQUIREMENTS: &[&str] = &["six==1.16.0", "attrs==23.2.0", "iniconfig==2.0.0"];

/// Units the benchmark runs: `c1` and `c100` change the first 1 and 100 source files,
/// `c10000` adds 10k files, `p<K>` (up to [`SWARM_MAX`]) change one file each; one run works
/// on up to this many at once.
pub const SCALING_MAX: usize = 8;
/// The `p<K>` units: the swarm's largest (16 units from 8 processes).
pub const SWARM_MAX: usize = 16;

pub struct Repo {
    pub dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// Source files, sorted as git sorts them.
    pub sources: Vec<String>,
}

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal variate (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

const WORDS: &[&str] = &[
    "self", "return", "value", "config", "request", "result", "items", "index", "None", "True",
    "def", "import", "from", "class", "for", "in", "if", "else", "elif", "while", "try", "except",
    "raise", "with", "as", "lambda", "yield", "assert", "parser", "token", "buffer", "stream",
    "handler", "session", "cache", "key", "path", "name", "data", "len", "range", "append",
    "update", "get", "set", "user", "account", "record", "field", "schema", "error", "logger",
    "debug", "retry", "timeout", "client", "server", "message", "payload", "offset",
];

const EXTENSIONS: &[(&str, u64)] = &[
    ("py", 60),
    ("md", 15),
    ("json", 10),
    ("txt", 10),
    ("cfg", 5),
];

/// A file's size: log-normal around 2.4 KB (mean about 4 KB), from 64 bytes to 128 KiB.
fn file_size(rng: &mut Rng) -> usize {
    let s = (2400f64.ln() + 1.0 * rng.normal()).exp();
    s.clamp(64.0, 131_072.0) as usize
}

fn content(rng: &mut Rng, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut indent = 0usize;
    while out.len() < size {
        for _ in 0..indent * 4 {
            out.push(b' ');
        }
        let words = 3 + rng.below(9);
        for w in 0..words {
            if w > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        }
        out.push(b'\n');
        indent = match rng.below(4) {
            0 => indent.saturating_sub(1),
            1 => (indent + 1).min(4),
            _ => indent,
        };
    }
    out.truncate(size);
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
}

fn extension(rng: &mut Rng) -> &'static str {
    let mut r = rng.below(100);
    for (ext, weight) in EXTENSIONS {
        if r < *weight {
            return ext;
        }
        r -= weight;
    }
    "py"
}

/// The source paths of a repository of `n` files: `src/pkgNNN/modNN/<word>_NNNNNN.<ext>`, about
/// 20 files a directory, 16 directories a package.
fn source_paths(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut paths = Vec::with_capacity(n);
    let mut i = 0;
    let mut dir = 0;
    while i < n {
        let in_dir = (14 + rng.below(13) as usize).min(n - i);
        for _ in 0..in_dir {
            let word = WORDS[rng.below(WORDS.len() as u64) as usize].to_lowercase();
            paths.push(format!(
                "src/pkg{:03}/mod{:02}/{word}_{i:06}.{}",
                dir / 16,
                dir % 16,
                extension(rng)
            ));
            i += 1;
        }
        dir += 1;
    }
    paths.sort();
    paths
}

/// The project files beside the sources: configuration, profile, units, manifests.
fn project_files(n: usize, sources: &[String]) -> Vec<(String, Vec<u8>)> {
    let agent = AGENT;
    let mut files = vec![
        (
            "boxdelegate.toml".to_string(),
            format!(
                "[project]\nprofile = \"bench\"\n\n[agent]\nkind = \"command\"\nretries = 0\ncommand = '''{agent}'''\n\n[verify]\nlint = \"{CHECK}\"\n\n[run]\ninfra_retries = 0\n\n[limits]\nmax_files = 20000\nmax_bytes = \"1g\"\n"
            ),
        ),
        (
            ".boxdelegate/profiles/bench.toml".to_string(),
            "description = \"benchmark: the pinned requirements, recorded without a network\"\nimage = \"boxdelegate/base:bookworm\"\nmanifests = [\"requirements.txt\"]\ninstall = '''\nmkdir -p /deps/lib\ncp requirements.txt /deps/lib/installed.txt\n'''\n".to_string(),
        ),
        (
            // One dependency key for every size: the dependency image is built once, so the
            // first image build of each later size is a cold unit image (each size's unit
            // images are removed when it is done, so none is the parent of another's).
            "requirements.txt".to_string(),
            format!("{}\n", REQUIREMENTS.join("\n")),
        ),
        (".gitignore".to_string(), "__pycache__/\n*.pyc\n.venv/\n".to_string()),
        // `.dockerignore` itself too: the docker CLI rewrites it when the Dockerfile lies outside
        // the context, which would defeat the naive baseline's build cache.
        (".dockerignore".to_string(), ".git\n.dockerignore\n".to_string()),
        ("README.md".to_string(), format!("# generated repository ({n} files)\n")),
        ("CHANGELOG.md".to_string(), "# changes\n".to_string()),
    ]
    .into_iter()
    .map(|(p, c)| (p, c.into_bytes()))
    .collect::<Vec<_>>();
    let mut unit = |id: &str, lines: &[String]| {
        let mut task = format!("Benchmark unit {id}: make the changes below.\n\n");
        for l in lines {
            task.push_str(l);
            task.push('\n');
        }
        files.push((
            format!("units/{id}.md"),
            format!(
                "+++\nid = \"{id}\"\ntitle = \"bench {id}\"\nscope = [\"src/**\"]\n+++\n{task}"
            )
            .into_bytes(),
        ));
    };
    let edit = |paths: &[String]| {
        paths
            .iter()
            .map(|p| format!("EDIT {p}"))
            .collect::<Vec<_>>()
    };
    unit("c1", &edit(&sources[..1]));
    if sources.len() >= 100 {
        unit("c100", &edit(&sources[..100]));
    }
    // Ten thousand modified files would cost the engine ten thousand archive reads (minutes on
    // some storage drivers); the 10k-file change adds new files instead.
    unit("c10000", &["ADD src/generated 10000".to_string()]);
    for k in 1..=SWARM_MAX.min(sources.len()) {
        // Spread over the tree so the scaling units touch different directories.
        let i = (k * sources.len() / (SWARM_MAX + 1)).min(sources.len() - 1);
        unit(&format!("p{k}"), &edit(&sources[i..=i]));
    }
    files
}

/// Writes a repository of `n` files (the sources plus the project files) under `dir`, with one
/// commit on `main` and its index refreshed.
pub fn generate(dir: &Path, n: usize) -> Result<Repo> {
    let mut rng = Rng(0x5eed_0000 ^ n as u64);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    proc::ok(proc::git(dir).args(["init", "-q", "-b", "main"]))?;
    let sources = source_paths(&mut rng, n.saturating_sub(26).max(SWARM_MAX));
    let extra = project_files(n, &sources);

    let mut import = proc::git(dir)
        .args(["-c", "core.compression=1", "-c", "pack.compression=1"])
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting git fast-import")?;
    let stdin = import.stdin.take().context("fast-import stdin")?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    let mut entries: Vec<(String, usize)> = Vec::new();
    let mut add = |w: &mut std::io::BufWriter<_>, path: &str, data: &[u8]| -> Result<()> {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&full, data).with_context(|| format!("writing {}", full.display()))?;
        let mark = entries.len() + 1;
        write!(w, "blob\nmark :{mark}\ndata {}\n", data.len())?;
        w.write_all(data)?;
        w.write_all(b"\n")?;
        entries.push((path.to_string(), mark));
        bytes += data.len() as u64;
        Ok(())
    };
    for path in &sources {
        let size = file_size(&mut rng);
        content(&mut rng, size, &mut buf);
        add(&mut w, path, &buf)?;
    }
    for (path, data) in &extra {
        add(&mut w, path, data)?;
    }
    write!(
        w,
        "commit refs/heads/main\ncommitter Bench <bench@example.com> 1767225600 +0000\ndata 24\ngenerated for benchmark\n"
    )?;
    for (path, mark) in &entries {
        writeln!(w, "M 100644 :{mark} {path}")?;
    }
    w.write_all(b"\n")?;
    w.flush()?;
    drop(w);
    let status = import.wait().context("waiting for git fast-import")?;
    if !status.success() {
        bail!("git fast-import failed ({status})");
    }
    proc::ok(proc::git(dir).args(["reset", "-q"]))?;
    proc::ok(proc::git(dir).args(["update-index", "-q", "--refresh"]))?;
    Ok(Repo {
        dir: dir.to_path_buf(),
        files: entries.len(),
        bytes,
        sources,
    })
}

impl Repo {
    /// Commits a one-line change to `CHANGELOG.md`.
    pub fn commit_one_file(&self, n: usize) -> Result<()> {
        let path = self.dir.join("CHANGELOG.md");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "- change {n}")?;
        proc::ok(proc::git(&self.dir).args(["add", "CHANGELOG.md"]))?;
        proc::ok(proc::git(&self.dir).args(["commit", "-q", "-m", &format!("change {n}")]))?;
        Ok(())
    }
}
