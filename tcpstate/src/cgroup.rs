//! Cgroups and pods: which cgroup v2 group a connection's owner is in, and what a Kubernetes
//! node's cgroup path says about the pod and container, without asking an API server.
//!
//! The kernel gives a cgroup v2 id (`bpf_get_current_cgroup_id()`): the inode number of the
//! group's directory on a cgroup2 mount. [`Resolver`] maps ids to paths relative to the
//! cgroup v2 root by walking that hierarchy; [`kubernetes`] reads pod UID and container id from
//! a path and is pure.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// What a cgroup path says about a Kubernetes pod's container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kubernetes {
    /// The pod UID in canonical form (dashes).
    pub pod_uid: Option<String>,
    /// The container id (64 hex digits for containerd, CRI-O and Docker).
    pub container_id: Option<String>,
}

/// The pod UID and container id in a cgroup path, for both kubelet cgroup drivers:
/// systemd (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
/// _>.slice/cri-containerd-<id>.scope`, also `docker-<id>.scope`, `crio-<id>.scope`) and
/// cgroupfs (`kubepods/burstable/pod<uid>/<id>`, guaranteed pods directly under `kubepods`).
pub fn kubernetes(path: &str) -> Kubernetes {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some(kube) = parts.iter().position(|p| is_kubepods(p)) else {
        return Kubernetes::default();
    };
    let mut out = Kubernetes::default();
    for (i, part) in parts.iter().enumerate().skip(kube + 1) {
        if let Some(uid) = pod_uid(part) {
            out.pod_uid = Some(uid);
            if let Some(next) = parts.get(i + 1) {
                out.container_id = container_id(next);
            }
            break;
        }
    }
    out
}

fn is_kubepods(part: &str) -> bool {
    part == "kubepods" || part == "kubepods.slice"
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        let at = slice.rfind("-pod")?;
        if !slice.starts_with("kubepods") {
            return None;
        }
        &slice[at + 4..]
    } else {
        part.strip_prefix("pod")?
    };
    canonical_uid(&raw.replace('_', "-"))
}

/// A UID in the 8-4-4-4-12 form, lower case; anything else is not a pod UID.
fn canonical_uid(s: &str) -> Option<String> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != lens.len()
        || groups
            .iter()
            .zip(lens)
            .any(|(g, n)| g.len() != n || !g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// `cri-containerd-<id>.scope`, `docker-<id>.scope`, `crio-<id>.scope` (systemd) or a bare
/// `<id>` (cgroupfs; `crio-<id>` too). The `crio-conmon-<id>` group of CRI-O's monitor is not
/// a container.
fn container_id(part: &str) -> Option<String> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let id = ["cri-containerd-", "docker-", "crio-", "containerd-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// Where this host's cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`'s text: the
/// mount of the hierarchy's root (`/` as its root), `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`
/// first when there are several.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let cols: Vec<&str> = left.split_whitespace().collect();
        if cols.get(3) != Some(&"/") {
            continue;
        }
        if let Some(point) = cols.get(4) {
            found.push(PathBuf::from(point.replace("\\040", " ")));
        }
    }
    let preferred = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
    preferred
        .iter()
        .find_map(|p| found.iter().find(|f| f.as_os_str() == *p).cloned())
        .or_else(|| found.into_iter().next())
}

/// Whether cgroup v1 controllers are mounted (a legacy or hybrid host), from mountinfo.
pub fn v1_controllers_mounted(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        line.split_once(" - ").is_some_and(|(_, right)| {
            let mut cols = right.split_whitespace();
            cols.next() == Some("cgroup")
                && cols.nth(1).is_some_and(|opts| {
                    opts.split(',')
                        .any(|o| !o.starts_with("name=") && CONTROLLERS.contains(&o))
                })
        })
    })
}

const CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "blkio",
    "pids",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

/// The path (relative to the cgroup v2 root, `/` for the root) of a process from the text of
/// its `/proc/PID/cgroup`: the `0::` line.
pub fn v2_path_of(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The id of the cgroup at `path` under the mount `root` (the inode of its directory).
pub fn id_of(root: &Path, path: &str) -> Option<u64> {
    fs::metadata(root.join(path.trim_start_matches('/')))
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.ino())
}

/// The id and level (the root is 0) of the cgroup at `path`, which is a path under the
/// cgroup v2 root or an absolute path below the mount.
pub fn locate(root: &Path, path: &str) -> Option<(u64, u32, String)> {
    let rel = Path::new(path)
        .strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.trim_start_matches('/').to_string());
    let id = id_of(root, &rel)?;
    let level = rel.split('/').filter(|p| !p.is_empty()).count() as u32;
    Some((id, level, format!("/{}", rel.trim_matches('/'))))
}

/// Longest cgroup path a recording carries (bytes); a longer one stays unknown.
pub const MAX_PATH_LEN: usize = 1024;
/// Most cgroup names the output keeps; beyond, new ones stay unknown (rare: that many groups
/// owning connections in one trace).
const MAX_NAMES: usize = 65_536;

/// A cgroup's path and what it says about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub path: String,
    pub kube: Kubernetes,
}

/// Cgroup id -> path, as the `Input::Cgroup` records named them (live or from a recording).
#[derive(Debug, Default, Clone)]
pub struct Names {
    map: HashMap<u64, Info>,
}

impl Names {
    pub fn insert(&mut self, id: u64, path: &str) {
        if self.map.len() >= MAX_NAMES && !self.map.contains_key(&id) {
            return;
        }
        self.map.insert(
            id,
            Info {
                path: path.to_string(),
                kube: kubernetes(path),
            },
        );
    }

    pub fn get(&self, id: u64) -> Option<&Info> {
        if id == 0 {
            return None;
        }
        self.map.get(&id)
    }
}

/// Live side: names each cgroup id once, before the first event that carries it, so the
/// stream (and a recording of it) says what the id means.
#[derive(Debug)]
pub struct Announcer {
    resolver: Resolver,
    announced: std::collections::HashSet<u64>,
}

impl Announcer {
    pub fn new(resolver: Resolver) -> Announcer {
        Announcer {
            resolver,
            announced: std::collections::HashSet::new(),
        }
    }

    /// The path to announce for `id`, if it was not announced yet and is known.
    pub fn announce(&mut self, id: u64) -> Option<String> {
        if id == 0 || self.announced.contains(&id) {
            return None;
        }
        let path = self.resolver.path(id)?;
        if path.len() > MAX_PATH_LEN {
            return None;
        }
        if self.announced.len() >= MAX_NAMES {
            // Announcing again after this costs a record each, never a wrong name.
            self.announced.clear();
        }
        self.announced.insert(id);
        Some(path)
    }
}

/// Most groups a walk visits (a bound on the time one refresh takes).
const MAX_WALK: usize = 200_000;
/// Most ids kept.
const MAX_CACHE: usize = 100_000;
/// A miss walks the hierarchy again at most this often.
const REFRESH: Duration = Duration::from_secs(1);

/// Maps cgroup v2 ids to their paths on this host.
#[derive(Debug)]
pub struct Resolver {
    root: Option<PathBuf>,
    root_id: Option<u64>,
    /// The root id is no answer: only cgroup v1 is in use for processes (hybrid host).
    root_is_unknown: bool,
    paths: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl Resolver {
    /// The host's resolver; `notices` gets what cannot be known.
    pub fn host(notices: &mut Vec<String>) -> Resolver {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = cgroup2_mount(&mountinfo);
        if root.is_none() {
            notices.push(
                "no cgroup v2 hierarchy is mounted: cgroup, pod_uid and container_id are null"
                    .into(),
            );
        }
        let root_id = root.as_deref().and_then(|r| id_of(r, ""));
        // On a hybrid host processes sit in the v2 root while v1 controllers place them: the
        // root is then what the kernel reports for everyone and means "not known".
        let root_is_unknown = v1_controllers_mounted(&mountinfo);
        if root_is_unknown && root.is_some() {
            notices.push(
                "cgroup v1 controllers are mounted: a process in the cgroup v2 root shows cgroup null"
                    .into(),
            );
        }
        Resolver {
            root,
            root_id,
            root_is_unknown,
            paths: HashMap::new(),
            last_walk: None,
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The path of the group with this id, `None` when unknown (0, the root on a v1 host, a
    /// group gone before it was seen).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 || self.root.is_none() {
            return None;
        }
        if Some(id) == self.root_id {
            return (!self.root_is_unknown).then(|| "/".to_string());
        }
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        let due = self.last_walk.is_none_or(|t| t.elapsed() >= REFRESH);
        if !due {
            return None;
        }
        self.walk();
        self.paths.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        if self.paths.len() > MAX_CACHE {
            self.paths.clear();
        }
        let mut stack = vec![(root, String::new())];
        let mut visited = 0;
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else {
                    continue;
                };
                if !meta.is_dir() {
                    continue;
                }
                visited += 1;
                if visited > MAX_WALK {
                    return;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let child = format!("{rel}/{name}");
                if self.paths.len() < MAX_CACHE {
                    self.paths.insert(meta.ino(), child.clone());
                }
                stack.push((e.path(), child));
            }
        }
    }
}

/// The inode of a network namespace given as a number, `/proc/PID/ns/net` or
/// `/var/run/netns/NAME` (or just `NAME`).
pub fn netns_inode(arg: &str) -> Result<u32, String> {
    if let Ok(n) = arg.parse::<u32>() {
        return if n == 0 {
            Err("0 is not a namespace inode".into())
        } else {
            Ok(n)
        };
    }
    let path = if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new("/var/run/netns").join(arg)
    };
    let meta = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    u32::try_from(meta.ino()).map_err(|_| format!("{}: inode does not fit", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6c3a4e-6f8d-4c1a-9e2b-7d5f1a2b3c4d";
    const ID: &str = "4f2d7a9c1b3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    fn k(path: &str) -> (Option<String>, Option<String>) {
        let r = kubernetes(path);
        (r.pod_uid, r.container_id)
    }

    #[test]
    fn systemd_driver_forms() {
        let u = UID.replace('-', "_");
        for (runtime, qos) in [
            ("cri-containerd", "burstable"),
            ("docker", "besteffort"),
            ("crio", "burstable"),
        ] {
            let path = format!(
                "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/{runtime}-{ID}.scope"
            );
            assert_eq!(k(&path), (Some(UID.into()), Some(ID.into())), "{path}");
        }
        // Guaranteed pods sit directly under kubepods.slice.
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope");
        assert_eq!(k(&path), (Some(UID.into()), Some(ID.into())));
        // The pod's own group: a pod, no container.
        let path =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice");
        assert_eq!(k(&path), (Some(UID.into()), None));
        // CRI-O's monitor is no container.
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope");
        assert_eq!(k(&path), (Some(UID.into()), None));
    }

    #[test]
    fn cgroupfs_driver_forms() {
        for qos in ["burstable/", "besteffort/", ""] {
            let path = format!("/kubepods/{qos}pod{UID}/{ID}");
            assert_eq!(k(&path), (Some(UID.into()), Some(ID.into())), "{path}");
        }
        assert_eq!(
            k(&format!(
                "/kubepods/besteffort/pod{}/{ID}",
                UID.to_uppercase()
            )),
            (Some(UID.into()), Some(ID.into()))
        );
    }

    #[test]
    fn not_kubernetes() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            &format!("/system.slice/docker-{ID}.scope"),
            "/kubepods/burstable/podnot-a-uid/abc",
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}x.slice"),
        ] {
            assert_eq!(k(path), (None, None), "{path}");
        }
    }

    #[test]
    fn mounts() {
        let hybrid = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(v1_controllers_mounted(hybrid));
        let unified = "31 30 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n\
                       40 30 0:27 /kubepods /mnt/x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert!(!v1_controllers_mounted(unified));
        let named_only = "33 30 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert!(!v1_controllers_mounted(named_only));
        assert_eq!(cgroup2_mount(named_only), None);
    }

    #[test]
    fn proc_cgroup_lines() {
        assert_eq!(v2_path_of("12:memory:/x\n0::/a/b\n"), Some("/a/b"));
        assert_eq!(v2_path_of("12:memory:/x\n"), None);
    }

    #[test]
    fn locate_gives_id_level_and_path_in_either_form() {
        let root =
            std::env::temp_dir().join(format!("tcpstate-cgroup-unit-{}", std::process::id()));
        let deep = root.join("a.slice/b.scope");
        fs::create_dir_all(&deep).unwrap();
        let ino = fs::metadata(&deep).unwrap().ino();
        let want = Some((ino, 2, "/a.slice/b.scope".to_string()));
        assert_eq!(locate(&root, "/a.slice/b.scope"), want);
        assert_eq!(locate(&root, "a.slice/b.scope/"), want);
        assert_eq!(locate(&root, &deep.to_string_lossy()), want);
        assert_eq!(locate(&root, "/missing"), None);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn names_carry_the_pod_and_skip_unknown_ids() {
        let mut n = Names::default();
        n.insert(7, &format!("/kubepods/besteffort/pod{UID}/{ID}"));
        let info = n.get(7).unwrap();
        assert_eq!(info.kube.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.kube.container_id.as_deref(), Some(ID));
        assert!(n.get(0).is_none() && n.get(8).is_none());
    }

    #[test]
    fn netns_numbers() {
        assert_eq!(netns_inode("4026531840"), Ok(4026531840));
        assert!(netns_inode("0").is_err());
        assert!(netns_inode("/nonexistent/ns").is_err());
    }
}
