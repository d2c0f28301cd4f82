//! libxdp and libbpf, linked from Debian's libxdp-dev (build.rs finds both through
//! pkg-config): the multi-program dispatcher protocol (xdp-tools' protocol.org) is
//! libxdp's own code, and the driver's reason for refusing native XDP comes from libbpf's
//! netlink attach. This module is the thin, safe glue: bindings for the few functions
//! used, owned handles that close themselves, and the libraries' messages routed into
//! our log (and captured, so an error can quote them).

use std::{
    cell::RefCell,
    ffi::{CStr, CString, c_char, c_int, c_long, c_uint, c_void},
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::{self, NonNull},
    sync::Once,
};

use anyhow::{Result, bail};
use log::debug;

/// XDP actions as libxdp numbers them (the kernel's `enum xdp_action`).
pub const XDP_PASS: c_uint = 2;

/// `enum xdp_attach_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum AttachMode {
    Unspec = 0,
    Native = 1,
    Skb = 2,
    Hw = 3,
}

/// Netlink XDP flags (linux/if_link.h).
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

const BPF_PROG_TYPE_EXT: c_uint = 28;

#[repr(C)]
struct XdpAttachOpts {
    sz: usize,
    old_prog_fd: c_int,
}

enum RawProgram {}
enum RawMultiprog {}
enum RawObject {}
enum RawBpfProgram {}
enum RawMap {}

/// A `va_list` as C passes it to a function: a pointer on x86-64 (an array that decays)
/// and on AArch64 (a 32-byte struct, passed by reference to a copy).
type VaList = *mut c_void;
type PrintFn = unsafe extern "C" fn(level: c_int, format: *const c_char, args: VaList) -> c_int;

// Linked through pkg-config by build.rs (libxdp, libbpf).
unsafe extern "C" {
    fn libxdp_set_print(print: Option<PrintFn>) -> Option<PrintFn>;
    fn libxdp_get_error(ptr: *const c_void) -> c_long;
    fn xdp_multiprog__get_from_ifindex(ifindex: c_int) -> *mut RawMultiprog;
    fn xdp_multiprog__close(mp: *mut RawMultiprog);
    fn xdp_multiprog__is_legacy(mp: *const RawMultiprog) -> bool;
    fn xdp_multiprog__main_prog(mp: *const RawMultiprog) -> *mut RawProgram;
    fn xdp_multiprog__next_prog(
        prog: *const RawProgram,
        mp: *const RawMultiprog,
    ) -> *mut RawProgram;
    fn xdp_multiprog__attach_mode(mp: *const RawMultiprog) -> AttachMode;
    fn xdp_program__create(opts: *mut ProgramOpts) -> *mut RawProgram;
    fn xdp_program__set_xdp_frags_support(prog: *mut RawProgram, frags: bool) -> c_int;
    #[cfg(test)]
    fn xdp_program__xdp_frags_support(prog: *const RawProgram) -> bool;
    fn xdp_program__find_file(
        filename: *const c_char,
        section: *const c_char,
        opts: *const c_void,
    ) -> *mut RawProgram;
    fn xdp_program__from_id(id: u32) -> *mut RawProgram;
    fn xdp_program__close(prog: *mut RawProgram);
    fn xdp_program__bpf_obj(prog: *mut RawProgram) -> *mut RawObject;
    fn xdp_program__id(prog: *const RawProgram) -> u32;
    fn xdp_program__name(prog: *const RawProgram) -> *const c_char;
    fn xdp_program__run_prio(prog: *const RawProgram) -> c_uint;
    fn xdp_program__set_run_prio(prog: *mut RawProgram, prio: c_uint) -> c_int;
    fn xdp_program__chain_call_enabled(prog: *const RawProgram, action: c_uint) -> bool;
    fn xdp_program__set_chain_call_enabled(
        prog: *mut RawProgram,
        action: c_uint,
        enabled: bool,
    ) -> c_int;
    fn xdp_program__attach(
        prog: *mut RawProgram,
        ifindex: c_int,
        mode: AttachMode,
        flags: c_uint,
    ) -> c_int;
    fn xdp_program__detach(
        prog: *mut RawProgram,
        ifindex: c_int,
        mode: AttachMode,
        flags: c_uint,
    ) -> c_int;
}

unsafe extern "C" {
    fn libbpf_set_print(print: Option<PrintFn>) -> Option<PrintFn>;
    fn bpf_xdp_attach(
        ifindex: c_int,
        prog_fd: c_int,
        flags: u32,
        opts: *const XdpAttachOpts,
    ) -> c_int;
    fn bpf_xdp_detach(ifindex: c_int, flags: u32, opts: *const XdpAttachOpts) -> c_int;
    fn bpf_object__open_mem(buf: *const c_void, size: usize, opts: *const c_void)
    -> *mut RawObject;
    fn bpf_object__close(obj: *mut RawObject);
    fn bpf_object__load(obj: *mut RawObject) -> c_int;
    fn bpf_object__next_map(obj: *const RawObject, map: *const RawMap) -> *mut RawMap;
    fn bpf_map__name(map: *const RawMap) -> *const c_char;
    fn bpf_map__reuse_fd(map: *mut RawMap, fd: c_int) -> c_int;
    fn bpf_object__find_program_by_name(
        obj: *const RawObject,
        name: *const c_char,
    ) -> *mut RawBpfProgram;
    fn bpf_program__fd(prog: *const RawBpfProgram) -> c_int;
    fn bpf_program__set_type(prog: *mut RawBpfProgram, kind: c_uint) -> c_int;
    fn bpf_program__set_expected_attach_type(prog: *mut RawBpfProgram, kind: c_uint) -> c_int;
    fn bpf_program__set_attach_target(
        prog: *mut RawBpfProgram,
        fd: c_int,
        function: *const c_char,
    ) -> c_int;
}

unsafe extern "C" {
    fn vsnprintf(buf: *mut c_char, size: usize, format: *const c_char, args: VaList) -> c_int;
}

thread_local! {
    /// Messages the libraries printed during `captured`, on this thread.
    static CAPTURE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Both libraries print through this: every message goes to the debug log, and into the
/// capture of the calling thread if one is open.
unsafe extern "C" fn print(_level: c_int, format: *const c_char, args: VaList) -> c_int {
    let mut buf = [0 as c_char; 1024];
    // SAFETY: `format` and `args` come from the library's printf-style call; vsnprintf
    // writes at most `buf.len()` bytes, NUL included.
    let written = unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), format, args) };
    if written < 0 {
        return written;
    }
    // SAFETY: vsnprintf NUL-terminated `buf`.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let text = text.trim();
    if !text.is_empty() {
        debug!("{text}");
        CAPTURE.with(|c| {
            if let Some(lines) = c.borrow_mut().as_mut() {
                lines.push(text.to_string());
            }
        });
    }
    written
}

fn install_print() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: `print` matches the libraries' print callback type.
        unsafe {
            libbpf_set_print(Some(print));
            libxdp_set_print(Some(print));
        }
    });
}

/// Runs `f`, returning what it returned and the messages the libraries printed meanwhile.
fn captured<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    install_print();
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let result = f();
    let lines = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (result, lines)
}

/// An error from a negative errno return, with the library's own words.
fn failure(what: &str, code: c_int, lines: &[String]) -> anyhow::Error {
    let errno = io::Error::from_raw_os_error(-code);
    let said = if lines.is_empty() {
        String::new()
    } else {
        format!(" (libxdp/libbpf: {})", lines.join("; "))
    };
    anyhow::anyhow!("{what}: {errno}{said}")
}

/// libxdp returns errors in pointers; `None` for an error (with its negative errno).
fn checked<T>(ptr: *mut T) -> std::result::Result<NonNull<T>, c_int> {
    // SAFETY: libxdp_get_error only inspects the pointer value.
    let code = unsafe { libxdp_get_error(ptr as *const c_void) } as c_int;
    match NonNull::new(ptr) {
        Some(ptr) if code == 0 => Ok(ptr),
        _ => Err(if code == 0 { -libc::ENOENT } else { code }),
    }
}

/// What the driver says when asked to run `program_fd` natively on `ifindex`: tried over
/// netlink (whose extended acknowledgement carries the driver's message; a BPF link
/// attach that failed does not), never replacing a program that is there. `None` if the
/// driver accepted, in which case the probe's attachment is removed again at once.
pub fn native_refusal(ifindex: u32, program_fd: BorrowedFd<'_>) -> Option<String> {
    let fd = program_fd.as_raw_fd();
    let flags = XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST;
    // SAFETY: plain syscall wrappers on an fd we hold.
    let (code, lines) =
        captured(|| unsafe { bpf_xdp_attach(ifindex as c_int, fd, flags, ptr::null()) });
    if code == 0 {
        let opts = XdpAttachOpts {
            sz: std::mem::size_of::<XdpAttachOpts>(),
            old_prog_fd: fd,
        };
        // Only our probe: REPLACE with the expected program fails if another is there.
        // SAFETY: as above; `opts` outlives the call.
        unsafe {
            bpf_xdp_detach(
                ifindex as c_int,
                XDP_FLAGS_DRV_MODE | XDP_FLAGS_REPLACE,
                &opts,
            )
        };
        return None;
    }
    let errno = io::Error::from_raw_os_error(-code);
    let driver: Vec<&str> = lines
        .iter()
        .filter_map(|l| {
            l.split_once("Kernel error message: ")
                .map(|(_, m)| m.trim())
        })
        .collect();
    Some(if driver.is_empty() {
        errno.to_string()
    } else {
        format!("{} ({errno})", driver.join("; "))
    })
}

/// A program on an interface, as libxdp reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookProgram {
    pub id: u32,
    pub name: String,
    /// Inside a dispatcher: the run priority and whether XDP_PASS continues the chain.
    pub priority: Option<u32>,
    pub chain_on_pass: bool,
}

/// What holds an interface's XDP hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    Empty,
    /// One program, not a libxdp dispatcher (ours in exclusive mode, or anyone's).
    Single {
        program: HookProgram,
        mode: AttachMode,
    },
    /// A libxdp dispatcher and its components in run order.
    Dispatcher {
        dispatcher: HookProgram,
        components: Vec<HookProgram>,
        mode: AttachMode,
    },
}

fn describe(prog: NonNull<RawProgram>, in_dispatcher: bool) -> HookProgram {
    let prog = prog.as_ptr();
    // SAFETY: `prog` is a live libxdp program handle; its name is a NUL-terminated string
    // it owns.
    unsafe {
        let name = xdp_program__name(prog);
        HookProgram {
            id: xdp_program__id(prog),
            name: if name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            },
            priority: in_dispatcher.then(|| xdp_program__run_prio(prog)),
            chain_on_pass: in_dispatcher && xdp_program__chain_call_enabled(prog, XDP_PASS),
        }
    }
}

/// Reads what is attached to `ifindex`, the way libxdp sees it.
pub fn inspect(ifindex: u32) -> Result<Hook> {
    // SAFETY: a query; the handle is closed below.
    let (mp, lines) = captured(|| unsafe { xdp_multiprog__get_from_ifindex(ifindex as c_int) });
    let mp = match checked(mp) {
        Ok(mp) => mp,
        Err(code) if code == -libc::ENOENT => return Ok(Hook::Empty),
        Err(code) => {
            return Err(failure(
                "reading the interface's XDP programs",
                code,
                &lines,
            ));
        }
    };
    let raw = mp.as_ptr();
    // SAFETY: `raw` is live until closed at the end; the programs it hands out are owned
    // by it.
    let hook = unsafe {
        let mode = xdp_multiprog__attach_mode(raw);
        match NonNull::new(xdp_multiprog__main_prog(raw)) {
            None => Hook::Empty,
            Some(main) if xdp_multiprog__is_legacy(raw) => Hook::Single {
                program: describe(main, false),
                mode,
            },
            Some(main) => {
                let mut components = Vec::new();
                let mut prog = xdp_multiprog__next_prog(ptr::null(), raw);
                while let Some(p) = NonNull::new(prog) {
                    components.push(describe(p, true));
                    prog = xdp_multiprog__next_prog(p.as_ptr(), raw);
                }
                Hook::Dispatcher {
                    dispatcher: describe(main, false),
                    components,
                    mode,
                }
            }
        }
    };
    // SAFETY: closing the handle opened above, once.
    unsafe { xdp_multiprog__close(raw) };
    Ok(hook)
}

/// The directory libxdp keeps its dispatcher object in (Debian's libxdp1).
const DISPATCHER_OBJECT: &str = "xdp-dispatcher.o";

/// Whether this kernel lets a program replace a function of another (freplace,
/// BPF_PROG_TYPE_EXT), which libxdp's dispatcher needs: the check libxdp itself makes
/// before building one, on its own dispatcher object, with the kernel's errno kept.
pub fn freplace_refusal() -> Option<String> {
    let (refusal, lines) = captured(|| {
        let open = || {
            let name = CString::new(DISPATCHER_OBJECT).unwrap();
            // SAFETY: libxdp finds and opens its object file; the handle is owned below.
            checked(unsafe { xdp_program__find_file(name.as_ptr(), ptr::null(), ptr::null()) })
                .map(Program)
        };
        let (target, extension) = match (open(), open()) {
            (Ok(t), Ok(e)) => (t, e),
            (Err(code), _) | (_, Err(code)) => {
                return Some(format!(
                    "libxdp's {DISPATCHER_OBJECT} could not be opened: {} (is libxdp1 installed?)",
                    io::Error::from_raw_os_error(-code)
                ));
            }
        };
        let function = CString::new("xdp_pass").unwrap();
        // SAFETY: both objects are open and owned by `target` / `extension`; the
        // programs they hand out live as long as they do.
        unsafe {
            let target_obj = xdp_program__bpf_obj(target.0.as_ptr());
            let code = bpf_object__load(target_obj);
            if code != 0 {
                return Some(format!(
                    "loading libxdp's dispatcher test program failed: {}",
                    io::Error::from_raw_os_error(-code)
                ));
            }
            let target_prog = bpf_object__find_program_by_name(target_obj, function.as_ptr());
            let ext_obj = xdp_program__bpf_obj(extension.0.as_ptr());
            let ext_prog = bpf_object__find_program_by_name(ext_obj, function.as_ptr());
            if target_prog.is_null() || ext_prog.is_null() {
                return Some(format!("{DISPATCHER_OBJECT} has no program xdp_pass"));
            }
            bpf_program__set_type(ext_prog, BPF_PROG_TYPE_EXT);
            bpf_program__set_expected_attach_type(ext_prog, 0);
            let code = bpf_program__set_attach_target(
                ext_prog,
                bpf_program__fd(target_prog),
                function.as_ptr(),
            );
            let code = if code == 0 {
                bpf_object__load(ext_obj)
            } else {
                code
            };
            (code != 0).then(|| {
                let errno = io::Error::from_raw_os_error(-code);
                let name = errno_name(-code);
                format!(
                    "loading a BPF_PROG_TYPE_EXT (freplace) program failed with {name}: {errno}"
                )
            })
        }
    });
    if let Some(refusal) = &refusal {
        debug!(
            "freplace probe: {refusal}; libbpf said: {}",
            lines.join("; ")
        );
    }
    refusal
}

fn errno_name(errno: c_int) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        libc::EACCES => "EACCES".into(),
        other => format!("errno {other}"),
    }
}

/// A libxdp program handle, closed on drop.
struct Program(NonNull<RawProgram>);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and closed once.
        unsafe { xdp_program__close(self.0.as_ptr()) }
    }
}

/// `struct xdp_program_opts` (libxdp 1.3): one way of naming the program at a time.
#[repr(C)]
struct ProgramOpts {
    sz: usize,
    obj: *mut RawObject,
    opts: *const c_void,
    prog_name: *const c_char,
    find_filename: *const c_char,
    open_filename: *const c_char,
    pin_path: *const c_char,
    id: u32,
    fd: c_int,
}

/// Our filter, opened by libbpf from the embedded object and handed to libxdp, not yet
/// loaded: its maps reuse `maps` (the pinned maps the agent holds, so the component and
/// the agent share one state), its run priority is `priority`, XDP_PASS continues the
/// chain (every other verdict ends it), and it is frags-aware.
struct Component(Program);

impl Component {
    fn open(
        object: &[u8],
        program: &str,
        maps: &[(&str, BorrowedFd<'_>)],
        priority: u32,
    ) -> std::result::Result<Component, (String, c_int)> {
        // SAFETY: libbpf copies the object while opening; the bpf_object is owned by the
        // xdp_program made from it (closed with it) or closed here on failure.
        let obj =
            unsafe { bpf_object__open_mem(object.as_ptr().cast(), object.len(), ptr::null()) };
        let obj =
            checked(obj).map_err(|c| ("libbpf could not open the filter's object".into(), c))?;
        let close = |what: String, code| {
            // SAFETY: nothing else owns the object yet.
            unsafe { bpf_object__close(obj.as_ptr()) };
            (what, code)
        };
        let mut map = ptr::null_mut();
        loop {
            // SAFETY: iterating the open object's maps.
            map = unsafe { bpf_object__next_map(obj.as_ptr(), map) };
            if map.is_null() {
                break;
            }
            // SAFETY: the map's name is owned by the object.
            let name = unsafe { CStr::from_ptr(bpf_map__name(map)) }.to_string_lossy();
            if let Some((_, fd)) = maps.iter().find(|(n, _)| *n == name) {
                // SAFETY: libbpf dups the fd.
                let code = unsafe { bpf_map__reuse_fd(map, fd.as_raw_fd()) };
                if code != 0 {
                    return Err(close(format!("reusing the pinned map {name}"), code));
                }
            }
        }
        let name = CString::new(program).unwrap();
        let mut opts = ProgramOpts {
            sz: std::mem::size_of::<ProgramOpts>(),
            obj: obj.as_ptr(),
            opts: ptr::null(),
            prog_name: name.as_ptr(),
            find_filename: ptr::null(),
            open_filename: ptr::null(),
            pin_path: ptr::null(),
            id: 0,
            fd: 0,
        };
        // SAFETY: `opts` names the object and the program; libxdp takes the object.
        let prog = match checked(unsafe { xdp_program__create(&mut opts) }) {
            Ok(p) => Program(p),
            Err(code) => {
                return Err(close(
                    format!("libxdp could not find {program} in the filter's object"),
                    code,
                ));
            }
        };
        // SAFETY: a live, unloaded handle.
        unsafe {
            xdp_program__set_run_prio(prog.0.as_ptr(), priority);
            xdp_program__set_chain_call_enabled(prog.0.as_ptr(), XDP_PASS, true);
            xdp_program__set_xdp_frags_support(prog.0.as_ptr(), true);
        }
        Ok(Component(prog))
    }
}

/// Our filter (`program` in `object`) as a component of a libxdp dispatcher on `ifindex`
/// (see [`Component`]), attached by libxdp, which builds or rebuilds the dispatcher.
/// Returns the component's program id.
pub fn attach_component(
    object: &[u8],
    program: &str,
    maps: &[(&str, BorrowedFd<'_>)],
    ifindex: u32,
    mode: AttachMode,
    priority: u32,
) -> Result<u32> {
    let (result, lines) = captured(|| -> std::result::Result<u32, (String, c_int)> {
        let component = Component::open(object, program, maps, priority)?;
        let prog = component.0.0.as_ptr();
        // SAFETY: a live handle.
        let code = unsafe { xdp_program__attach(prog, ifindex as c_int, mode, 0) };
        if code != 0 {
            return Err((
                "libxdp could not attach the filter to the dispatcher".into(),
                code,
            ));
        }
        // SAFETY: a live, now loaded handle.
        Ok(unsafe { xdp_program__id(prog) })
    });
    result.map_err(|(what, code)| failure(&what, code, &lines))
}

/// Removes the component with program id `id` from the dispatcher on `ifindex` (libxdp
/// rebuilds the dispatcher without it; the other components stay).
pub fn detach_component(id: u32, ifindex: u32, mode: AttachMode) -> Result<()> {
    let (code, lines) = captured(|| {
        // SAFETY: a handle of our own to the program, closed on drop.
        let prog = match checked(unsafe { xdp_program__from_id(id) }) {
            Ok(p) => Program(p),
            Err(code) => return code,
        };
        // SAFETY: a live handle.
        unsafe { xdp_program__detach(prog.0.as_ptr(), ifindex as c_int, mode, 0) }
    });
    if code != 0 {
        bail!(failure(
            &format!("removing our component (program {id}) from the dispatcher"),
            code,
            &lines
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use aya::programs::loaded_programs;
    use filter_common::{PROGRAM_FILTER, maps::FILTER_CONFIG};

    use super::*;
    use crate::dataplane::{Capacity, Dataplane, OBJECT};

    /// What a dispatcher component needs of the object, short of freplace: libbpf opens
    /// it, libxdp finds the filter in it, and the kernel loads it sharing the agent's maps.
    #[test]
    fn libbpf_opens_the_filter_object_and_loads_the_filter_on_the_agents_maps() {
        let dataplane = Dataplane::load(Capacity {
            sources_v4: 1024,
            sources_v6: 1024,
        })
        .expect("loading the XDP program needs root");
        let fds = dataplane.map_fds().unwrap();
        let maps: Vec<(&str, BorrowedFd<'_>)> =
            fds.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
        let component = Component::open(OBJECT, PROGRAM_FILTER, &maps, 7)
            .unwrap_or_else(|(what, code)| panic!("{}", failure(&what, code, &[])));
        let prog = component.0.0.as_ptr();
        // SAFETY: a live handle; loading it as a plain XDP program here, as libxdp loads
        // it as an extension in a dispatcher.
        let (name, priority, frags, code) = unsafe {
            (
                CStr::from_ptr(xdp_program__name(prog))
                    .to_string_lossy()
                    .into_owned(),
                xdp_program__run_prio(prog),
                xdp_program__xdp_frags_support(prog),
                bpf_object__load(xdp_program__bpf_obj(prog)),
            )
        };
        assert_eq!((name.as_str(), priority, frags), (PROGRAM_FILTER, 7, true));
        assert_eq!(code, 0, "the kernel refused the filter loaded by libbpf");
        let filter_config = dataplane
            .map(FILTER_CONFIG.name)
            .unwrap()
            .info()
            .unwrap()
            .id();
        let on_our_maps = loaded_programs()
            .filter_map(|p| p.ok())
            .filter(|p| p.name_as_str() == Some(PROGRAM_FILTER))
            .filter(|p| {
                p.map_ids()
                    .ok()
                    .flatten()
                    .is_some_and(|ids| ids.contains(&filter_config))
            })
            .count();
        assert_eq!(
            on_our_maps, 2,
            "aya's filter and libbpf's share FILTER_CONFIG"
        );
    }
}
