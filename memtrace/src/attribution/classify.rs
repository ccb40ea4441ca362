//! What kind of memory a call site makes and who really asked for it: the
//! rule table, in one place.
//!
//! Three questions are answered from a symbolized stack (innermost frame
//! first) and the shape of the ranges it mapped:
//!
//! 1. **Which runtime or allocator each frame belongs to** ([`Runtime`]):
//!    by its module (the mapped file: `libjemalloc.so*`, `libjvm.so`,
//!    `libpython3*`, a Go binary told by its `.go.buildinfo` section…, see
//!    [`MODULES`]) and by its function name (`runtime.*`, `v8::*`,
//!    `je_*`…, see [`FUNCTIONS`]). Modules come first for libraries that
//!    are nothing but the runtime, so stripped frames classify too.
//! 2. **The caller, not the wrapper** ([`caller`]): the call site is the
//!    first frame outside libc, the loader and the allocation machinery
//!    ([`MACHINERY`], [`PLUMBING`]); the machinery frame it called is kept
//!    as `via`.
//! 3. **The kind of memory** ([`classify`]): the first [`RULES`] entry
//!    whose conditions all hold gives a [`MemoryClass`]: a top-level
//!    [`SiteCategory`], the runtime, and the sub-category the runtime's own
//!    tools would show (Go heap / goroutine stacks / runtime metadata, Java
//!    heap / metaspace / code cache…). The *owner* of a mapping is the
//!    runtime of the frame that made the syscall: memory malloc mapped for
//!    V8 is malloc memory (with V8 named), not V8's heap.
//!
//! Names are matched by prefix on the qualified name ([`qualified`]: C++
//! return types and Rust `<T as Trait>` wrappers removed).

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use memtrace_common::EventKind;
use serde::Serialize;

use crate::stack::{callsite::CallStack, symbolize::Frame};

/// A language runtime or a malloc implementation: whose memory it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Go,
    Jvm,
    /// V8 and node (the `node` binary embeds V8, libuv and OpenSSL).
    V8,
    Cpython,
    /// glibc's malloc (arenas, the brk heap, mmapped chunks).
    Glibc,
    Jemalloc,
    Tcmalloc,
    Mimalloc,
}

impl Runtime {
    pub fn label(self) -> &'static str {
        match self {
            Runtime::Go => "Go",
            Runtime::Jvm => "JVM",
            Runtime::V8 => "V8/node",
            Runtime::Cpython => "CPython",
            Runtime::Glibc => "glibc malloc",
            Runtime::Jemalloc => "jemalloc",
            Runtime::Tcmalloc => "tcmalloc",
            Runtime::Mimalloc => "mimalloc",
        }
    }

    /// A malloc implementation: all of its code is machinery.
    pub fn is_allocator(self) -> bool {
        matches!(
            self,
            Runtime::Glibc | Runtime::Jemalloc | Runtime::Tcmalloc | Runtime::Mimalloc
        )
    }
}

/// Modules (mapped files) that belong to a runtime, by file name.
pub struct ModuleRule {
    pub runtime: Runtime,
    /// File names; a trailing `*` matches any rest (`libjemalloc.so*`).
    pub names: &'static [&'static str],
    /// Every frame of the module is the runtime's (libraries that are only
    /// the runtime). Otherwise only its unnamed frames are: a `node` binary
    /// also holds OpenSSL and the application's natives, told by name.
    pub whole: bool,
}

/// Runtimes by module. Go binaries have no fixed name: any ELF file with a
/// `.go.buildinfo` (or `.gopclntab`) section is Go's, for its unnamed
/// frames (see [`is_go_module`]).
pub const MODULES: &[ModuleRule] = &[
    ModuleRule {
        runtime: Runtime::Jemalloc,
        names: &["libjemalloc.so*"],
        whole: true,
    },
    ModuleRule {
        runtime: Runtime::Tcmalloc,
        names: &["libtcmalloc*"],
        whole: true,
    },
    ModuleRule {
        runtime: Runtime::Mimalloc,
        names: &["libmimalloc*"],
        whole: true,
    },
    ModuleRule {
        runtime: Runtime::Jvm,
        names: &["libjvm.so"],
        whole: true,
    },
    ModuleRule {
        runtime: Runtime::Cpython,
        names: &["libpython3*", "python3", "python3.*"],
        whole: true,
    },
    ModuleRule {
        runtime: Runtime::V8,
        names: &["node", "nodejs", "libnode.so*", "libv8.so*"],
        whole: false,
    },
];

/// Runtimes by function name (prefixes of the qualified name), for frames
/// not already decided by a whole module.
pub const FUNCTIONS: &[(Runtime, &[&str])] = &[
    // With cgo the runtime maps through libc, from its C shim.
    (Runtime::Go, &["runtime.", "x_cgo_mmap", "_cgo_mmap"]),
    (Runtime::V8, &["v8::", "cppgc::", "node::"]),
    (
        Runtime::Cpython,
        &["_PyObject_", "PyObject_", "_PyMem_", "PyMem_"],
    ),
    (Runtime::Jemalloc, &["je_", "jemalloc", "_rjem_"]),
    (Runtime::Tcmalloc, &["tcmalloc::", "TCMalloc", "tc_"]),
    (Runtime::Mimalloc, &["mi_", "_mi_"]),
];

/// glibc malloc's functions, compared without leading underscores and
/// `GI_` (`__GI___libc_malloc` is `libc_malloc`): exact names, as `malloc`
/// is common as a prefix.
pub const GLIBC_MALLOC: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "memalign",
    "posix_memalign",
    "aligned_alloc",
    "valloc",
    "pvalloc",
    "libc_malloc",
    "libc_calloc",
    "libc_realloc",
    "libc_memalign",
    "libc_valloc",
    "libc_pvalloc",
    "sysmalloc",
    "sysmalloc_mmap",
    "int_malloc",
    "int_realloc",
    "int_memalign",
    "int_new_arena",
    "alloc_new_heap",
    "new_heap",
    "grow_heap",
    "arena_get2",
    "tcache_init",
    "glibc_morecore",
    "default_morecore",
];

/// Allocation machinery of each runtime, by function prefix: frames the
/// call site looks past. Allocators' frames are all machinery, and so are
/// a runtime's unnamed frames (stripped internals).
pub const MACHINERY: &[(Runtime, &[&str])] = &[
    (Runtime::Go, &["runtime.", "x_cgo_mmap", "_cgo_mmap"]),
    (
        Runtime::Jvm,
        &[
            "os::",
            "G1",
            "HeapRegion",
            "VirtualSpace",
            "ReservedSpace",
            "ReservedHeapSpace",
            "ReservedCodeSpace",
            "metaspace::",
            "Metaspace::",
            "MetaspaceArena",
            "ClassLoaderMetaspace",
            "MetaspaceShared::",
            "FileMapInfo::",
            "CodeCache::",
            "CodeHeap::",
            "CollectedHeap::",
            "MemAllocator",
            "ObjAllocator",
            "ObjArrayAllocator",
            "ClassAllocator",
            "CardTable",
            "PSVirtualSpace",
            "PSYoungGen",
            "PSOldGen",
            "ParallelScavengeHeap",
            "ParallelCompactData",
            "ParMarkBitMap",
            "SerialHeap",
            "GenCollectedHeap",
            "DefNewGeneration",
            "TenuredGeneration",
            "CardGeneration",
            "ShenandoahHeap",
            "ZPhysicalMemory",
            "ZPageAllocator",
            "ZHeap",
            "EpsilonHeap",
            "MarkBitMap",
            "NMTPreInit",
            "AllocateHeap",
            "ReallocateHeap",
            "ResourceObj::operator new",
            "Arena::",
            "ChunkPool",
            "Chunk::operator new",
            "MallocArrayAllocator",
            "MmapArrayAllocator",
            "ArrayAllocator",
            "MallocTracker",
            "MemTracker",
        ],
    ),
    (
        Runtime::V8,
        &[
            "v8::base::",
            "cppgc::internal::",
            "v8::PageAllocator",
            "v8::ArrayBuffer::",
            "v8::BackingStore",
            "v8::internal::VirtualMemory",
            "v8::internal::MemoryAllocator",
            "v8::internal::Heap::",
            "v8::internal::HeapAllocator",
            "v8::internal::BackingStore",
            "v8::internal::PagedSpace",
            "v8::internal::CompactionSpace",
            "v8::internal::OldSpace",
            "v8::internal::NewSpace",
            "v8::internal::SemiSpace",
            "v8::internal::PagedNewSpace",
            "v8::internal::LargeObjectSpace",
            "v8::internal::OldLargeObjectSpace",
            "v8::internal::NewLargeObjectSpace",
            "v8::internal::CodeLargeObjectSpace",
            "v8::internal::ReadOnlySpace",
            "v8::internal::ReadOnlyHeap",
            "v8::internal::MemoryChunk",
            "v8::internal::BasicMemoryChunk",
            "v8::internal::Page::",
            "v8::internal::LargePage",
            "v8::internal::CodeRange",
            "v8::internal::VirtualMemoryCage",
            "v8::internal::Zone",
            "v8::internal::AccountingAllocator",
            "v8::internal::Factory",
            "v8::internal::FactoryBase",
            "v8::internal::Malloced",
            "v8::internal::AllocWithRetry",
            "v8::internal::AlignedAllocWithRetry",
            "v8::internal::IsolateAllocator",
            "v8::internal::LocalHeap",
            "v8::internal::MainAllocator",
            "v8::internal::ConcurrentAllocator",
            "v8::internal::SpaceWithLinearArea",
            "node::NodeArrayBufferAllocator",
            "node::ArrayBufferAllocator",
            "node::DebuggingArrayBufferAllocator",
        ],
    ),
    (
        Runtime::Cpython,
        &[
            "_PyObject_",
            "_PyMem_",
            "PyMem_",
            "PyObject_Malloc",
            "PyObject_Calloc",
            "PyObject_Realloc",
            "PyObject_GC_",
            "new_arena",
            "pymalloc_",
            "allocate_from_new_pool",
        ],
    ),
];

/// Allocation plumbing outside any runtime: Rust's `alloc` shims and
/// collections, C++ `operator new` and the standard containers, and the
/// malloc wrappers of common C code (redis's `zmalloc`, glib's
/// `g_malloc`, `xmalloc`).
pub const PLUMBING: &[&str] = &[
    "alloc::",
    "core::alloc::",
    "std::alloc::",
    "std::sys::alloc::",
    "__rust_",
    "__rdl_",
    "__rg_",
    "hashbrown::raw::",
    // Freeing can map too (glibc makes a thread's arena on its first
    // free): the code that dropped the value is the caller.
    "core::ptr::drop_in_place",
    "core::ops::drop::Drop>::drop",
    "operator new",
    "__gnu_cxx::",
    // C++ containers (Rust's `std::` is the program's runtime, not plumbing).
    "std::vector<",
    "std::_Vector_base<",
    "std::__cxx11::basic_string<",
    "std::basic_string<",
    "std::_Hashtable<",
    "std::__detail::",
    "std::_Rb_tree<",
    "std::deque<",
    "std::_Deque_base<",
    "std::__cxx11::list<",
    "std::_List_base<",
    "std::__new_allocator<",
    "std::allocator<",
    "std::allocator_traits<",
    "std::__allocated_ptr<",
    "std::__shared_count<",
    "std::make_shared<",
    "std::make_unique<",
    "zmalloc",
    "ztrymalloc",
    "zcalloc",
    "ztrycalloc",
    "zrealloc",
    "ztryrealloc",
    "xmalloc",
    "xcalloc",
    "xrealloc",
    "g_malloc",
    "g_try_malloc",
    "g_realloc",
    "g_slice_alloc",
];

/// A sub-category: one row of the breakdown by kind of memory.
#[derive(Debug, PartialEq, Eq)]
pub struct MemoryClass {
    /// Stable identifier (JSON `subcategory`).
    pub name: &'static str,
    /// The top-level category it adds up into.
    pub category: SiteCategory,
    pub runtime: Option<Runtime>,
    /// For the breakdown (at most 48 characters).
    pub label: &'static str,
    /// For the call-site table (at most 16 characters).
    pub short: &'static str,
}

/// One condition of a [`Rule`].
#[derive(Debug)]
pub enum Cond {
    /// Named with `prctl(PR_SET_VMA_ANON_NAME)`.
    Named,
    /// A thread stack: mapped with `MAP_STACK`, or by `pthread_create`.
    ThreadStack,
    /// Some range is executable anonymous memory.
    Exec,
    /// Made by `brk`.
    Brk,
    /// The frame that made the syscall belongs to this runtime.
    Owner(Runtime),
    /// The frame that made the syscall belongs to a malloc implementation.
    OwnerIsAllocator,
    /// Some frame's function starts with one of these.
    Calls(&'static [&'static str]),
    /// Some frame belongs to this runtime.
    Within(Runtime),
    /// Committed into a reservation whose stack has a frame starting with
    /// one of these ([`crate::attribution::ledger::Origin::reserved_by`]).
    ReservedBy(&'static [&'static str]),
}

/// All conditions hold → this class.
#[derive(Debug)]
pub struct Rule {
    pub when: &'static [Cond],
    pub class: MemoryClass,
}

const fn class(
    name: &'static str,
    category: SiteCategory,
    runtime: Option<Runtime>,
    label: &'static str,
    short: &'static str,
) -> MemoryClass {
    MemoryClass {
        name,
        category,
        runtime,
        label,
        short,
    }
}

use Cond::*;
use Runtime as R;
/// What kind of memory a call site makes: the top-level categories, each
/// split into the sub-categories of [`RULES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteCategory {
    /// Ranges named with `prctl(PR_SET_VMA_ANON_NAME)`.
    NamedRegions,
    /// pthread stacks, goroutine stacks.
    ThreadStacks,
    /// Executable anonymous memory: JIT compilers, code caches, trampolines.
    JitCode,
    /// Language runtimes' own heaps (Go, JVM, V8, CPython's pymalloc).
    RuntimeHeaps,
    /// malloc implementations: glibc arenas and brk heap, jemalloc,
    /// tcmalloc, mimalloc (with the runtime that asked, when one did).
    AllocatorArenas,
    /// Everything else mapped by a known call site.
    OtherCallSites,
    /// Memory mapped before tracing began.
    Untraced,
}

impl SiteCategory {
    pub const ALL: [SiteCategory; 7] = [
        SiteCategory::NamedRegions,
        SiteCategory::AllocatorArenas,
        SiteCategory::ThreadStacks,
        SiteCategory::RuntimeHeaps,
        SiteCategory::JitCode,
        SiteCategory::OtherCallSites,
        SiteCategory::Untraced,
    ];

    /// Stable machine name, as JSON writes it (`"runtime_heaps"`).
    pub fn name(self) -> &'static str {
        match self {
            SiteCategory::NamedRegions => "named_regions",
            SiteCategory::ThreadStacks => "thread_stacks",
            SiteCategory::JitCode => "jit_code",
            SiteCategory::RuntimeHeaps => "runtime_heaps",
            SiteCategory::AllocatorArenas => "allocator_arenas",
            SiteCategory::OtherCallSites => "other_call_sites",
            SiteCategory::Untraced => "untraced",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SiteCategory::NamedRegions => "named regions",
            SiteCategory::ThreadStacks => "thread stacks",
            SiteCategory::JitCode => "JIT / executable anonymous",
            SiteCategory::RuntimeHeaps => "runtime heaps (Go, JVM, V8, CPython)",
            SiteCategory::AllocatorArenas => "allocator arenas (malloc)",
            SiteCategory::OtherCallSites => "other call sites",
            SiteCategory::Untraced => "untraced (mapped before tracing)",
        }
    }
}

use SiteCategory as C;

const THREAD_STACK_FUNCS: &[&str] = &["allocate_stack", "pthread_create", "__pthread_create"];
const GO_METADATA: &[&str] = &[
    "runtime.persistentalloc",
    "runtime.(*fixalloc)",
    "runtime.(*pageAlloc)",
    "runtime.(*scavengeIndex)",
    "runtime.newArenaMayUnlock",
    "runtime.newMarkBits",
    "runtime.newAllocBits",
    "runtime.getempty",
];
const GO_STACKS: &[&str] = &[
    "runtime.stackalloc",
    "runtime.stackpoolalloc",
    "runtime.stackcacherefill",
    "runtime.(*mheap).allocManual",
    "runtime.malg",
    "runtime.newproc1",
    "runtime.copystack",
    "runtime.newstack",
];
const JVM_CODE: &[&str] = &[
    "CodeCache::",
    "CodeHeap::",
    "CodeBlob",
    "BufferBlob",
    "nmethod::",
];
const JVM_CDS: &[&str] = &["FileMapInfo::", "ArchiveBuilder", "DynamicArchive"];
const JVM_METASPACE: &[&str] = &[
    "metaspace::",
    "Metaspace::",
    "MetaspaceArena",
    "ClassLoaderMetaspace",
];
const JVM_GC: &[&str] = &[
    "G1RegionsSmallerThanCommitSizeMapper",
    "G1CardTable",
    "G1BlockOffsetTable",
    "G1CMBitMap",
    "G1CMMarkStack",
    "G1CardSet",
    "G1SegmentedArray",
    "G1MonotonicArena",
    "G1FromCardCache",
    "G1RemSet",
    "G1CardCounts",
    "G1RegionMarkStatsCache",
    "MarkBitMap",
    "CardTable",
    "PSCardTable",
    "ParMarkBitMap",
    "ParallelCompactData",
    "ObjectStartArray",
    "GenericTaskQueue",
    "ShenandoahMarkBitMap",
    "ZMarkStack",
];
/// Reservations of GC data committed like the heap (G1's mark bitmaps,
/// block offset table, card table and card counts).
const JVM_GC_RESERVATIONS: &[&str] = &["G1CollectedHeap::create_aux_memory_mapper"];
const JVM_HEAP: &[&str] = &[
    "G1",
    "HeapRegion",
    "CollectedHeap::",
    "MemAllocator",
    "ParallelScavengeHeap",
    "PSYoungGen",
    "PSOldGen",
    "PSVirtualSpace",
    "SerialHeap",
    "GenCollectedHeap",
    "DefNewGeneration",
    "TenuredGeneration",
    "CardGeneration",
    "ShenandoahHeap",
    "ZPhysicalMemory",
    "ZPageAllocator",
    "ZHeap",
    "EpsilonHeap",
    "Universe::reserve_heap",
];
const JVM_DIRECT: &[&str] = &["Unsafe_AllocateMemory0", "Unsafe_ReallocateMemory0"];
const V8_CODE: &[&str] = &[
    "v8::internal::CodeRange",
    "v8::internal::CodeSpace",
    "v8::internal::CodeLargeObjectSpace",
    "v8::internal::wasm::WasmCodeManager",
    "v8::internal::wasm::NativeModule",
];
const V8_ARRAY_BUFFERS: &[&str] = &[
    "node::NodeArrayBufferAllocator",
    "node::ArrayBufferAllocator",
    "node::DebuggingArrayBufferAllocator",
    "v8::internal::BackingStore",
    "v8::internal::Heap::AllocateExternalBackingStore",
    "v8::ArrayBuffer::",
    "v8::BackingStore",
];

// Classes that more than one rule leads to (each rule one way of telling
// the same memory).
const JVM_GC_CLASS: MemoryClass = class(
    "jvm_gc",
    C::RuntimeHeaps,
    Some(R::Jvm),
    "JVM GC data (card table, bitmaps, remsets)",
    "JVM GC data",
);

const V8_CODE_CLASS: MemoryClass = class(
    "v8_code",
    C::JitCode,
    Some(R::V8),
    "V8 code space",
    "V8 code",
);

const JVM_CODE_CACHE_CLASS: MemoryClass = class(
    "jvm_code_cache",
    C::JitCode,
    Some(R::Jvm),
    "JVM code cache",
    "JVM code cache",
);

const GLIBC_MALLOC_CLASS: MemoryClass = class(
    "glibc_malloc",
    C::AllocatorArenas,
    Some(R::Glibc),
    "glibc malloc (arenas, brk heap, mmapped chunks)",
    "glibc malloc",
);

/// The rules, first match wins. Every list ends in a rule without
/// conditions, so each call site gets exactly one class.
pub const RULES: &[Rule] = &[
    Rule {
        when: &[Named],
        class: class(
            "named_regions",
            C::NamedRegions,
            None,
            "named regions",
            "named",
        ),
    },
    // Thread stacks come first: the JVM's are pthread's, made for it.
    Rule {
        when: &[ThreadStack, Within(R::Jvm)],
        class: class(
            "jvm_thread_stacks",
            C::ThreadStacks,
            Some(R::Jvm),
            "JVM thread stacks",
            "JVM thread stack",
        ),
    },
    Rule {
        when: &[ThreadStack],
        class: class(
            "thread_stacks",
            C::ThreadStacks,
            None,
            "thread stacks (pthread)",
            "thread stack",
        ),
    },
    // Go: the seed's three, as runtime.MemStats tells them apart. Metadata
    // first: page-table growth runs inside heap growth.
    Rule {
        when: &[Owner(R::Go), Calls(GO_METADATA)],
        class: class(
            "go_metadata",
            C::RuntimeHeaps,
            Some(R::Go),
            "Go runtime metadata (spans, GC bits, pages)",
            "Go metadata",
        ),
    },
    Rule {
        when: &[Owner(R::Go), Calls(GO_STACKS)],
        class: class(
            "go_stacks",
            C::ThreadStacks,
            Some(R::Go),
            "Go goroutine stacks",
            "goroutine stack",
        ),
    },
    Rule {
        when: &[Owner(R::Go)],
        class: class(
            "go_heap",
            C::RuntimeHeaps,
            Some(R::Go),
            "Go heap",
            "Go heap",
        ),
    },
    // JVM: as `jcmd VM.native_memory` groups it.
    Rule {
        when: &[Owner(R::Jvm), Calls(JVM_CODE)],
        class: JVM_CODE_CACHE_CLASS,
    },
    Rule {
        when: &[Owner(R::Jvm), Calls(JVM_CDS)],
        class: class(
            "jvm_cds_archive",
            C::RuntimeHeaps,
            Some(R::Jvm),
            "JVM CDS archive (shared classes)",
            "JVM CDS archive",
        ),
    },
    Rule {
        when: &[Owner(R::Jvm), Calls(JVM_METASPACE)],
        class: class(
            "jvm_metaspace",
            C::RuntimeHeaps,
            Some(R::Jvm),
            "JVM metaspace and class space",
            "JVM metaspace",
        ),
    },
    // G1 commits its mark bitmaps and other per-region data through the
    // same code as the heap itself; only their reservations differ.
    Rule {
        when: &[Owner(R::Jvm), ReservedBy(JVM_GC_RESERVATIONS)],
        class: JVM_GC_CLASS,
    },
    Rule {
        when: &[Owner(R::Jvm), Calls(JVM_GC)],
        class: JVM_GC_CLASS,
    },
    Rule {
        when: &[Owner(R::Jvm), Calls(JVM_HEAP)],
        class: class(
            "jvm_heap",
            C::RuntimeHeaps,
            Some(R::Jvm),
            "Java heap",
            "Java heap",
        ),
    },
    Rule {
        when: &[Owner(R::Jvm), Exec],
        class: JVM_CODE_CACHE_CLASS,
    },
    Rule {
        when: &[Owner(R::Jvm)],
        class: class(
            "jvm_other",
            C::RuntimeHeaps,
            Some(R::Jvm),
            "JVM internal (other)",
            "JVM internal",
        ),
    },
    // V8: as node's process.memoryUsage() splits it.
    Rule {
        when: &[Owner(R::V8), Exec],
        class: V8_CODE_CLASS,
    },
    Rule {
        when: &[Owner(R::V8), Calls(V8_CODE)],
        class: V8_CODE_CLASS,
    },
    Rule {
        when: &[Owner(R::V8)],
        class: class(
            "v8_heap",
            C::RuntimeHeaps,
            Some(R::V8),
            "V8 JS heap",
            "V8 JS heap",
        ),
    },
    Rule {
        when: &[Exec],
        class: class(
            "jit_code",
            C::JitCode,
            None,
            "JIT / executable anonymous",
            "jit/exec",
        ),
    },
    // CPython maps nothing itself but obmalloc's arenas (the mmap module
    // is an extension module of its own).
    Rule {
        when: &[Owner(R::Cpython)],
        class: class(
            "cpython_pymalloc",
            C::RuntimeHeaps,
            Some(R::Cpython),
            "CPython pymalloc arenas (objects ≤ 512 B)",
            "pymalloc",
        ),
    },
    // malloc'd memory: the runtime that asked, when one did.
    Rule {
        when: &[OwnerIsAllocator, Calls(V8_ARRAY_BUFFERS)],
        class: class(
            "v8_array_buffers",
            C::AllocatorArenas,
            Some(R::V8),
            "V8 ArrayBuffer backing stores (malloc)",
            "ArrayBuffer",
        ),
    },
    Rule {
        when: &[OwnerIsAllocator, Within(R::V8)],
        class: class(
            "v8_malloc",
            C::AllocatorArenas,
            Some(R::V8),
            "V8/node native (malloc)",
            "V8/node malloc",
        ),
    },
    Rule {
        when: &[OwnerIsAllocator, Calls(JVM_DIRECT)],
        class: class(
            "jvm_direct_memory",
            C::AllocatorArenas,
            Some(R::Jvm),
            "JVM direct memory (DirectByteBuffer, Unsafe)",
            "JVM direct mem",
        ),
    },
    Rule {
        when: &[OwnerIsAllocator, Within(R::Jvm)],
        class: class(
            "jvm_malloc",
            C::AllocatorArenas,
            Some(R::Jvm),
            "JVM native (malloc)",
            "JVM malloc",
        ),
    },
    Rule {
        when: &[OwnerIsAllocator, Within(R::Cpython)],
        class: class(
            "cpython_malloc",
            C::AllocatorArenas,
            Some(R::Cpython),
            "CPython malloc (objects > 512 B, buffers)",
            "CPython malloc",
        ),
    },
    Rule {
        when: &[Owner(R::Jemalloc)],
        class: class(
            "jemalloc",
            C::AllocatorArenas,
            Some(R::Jemalloc),
            "jemalloc arenas",
            "jemalloc",
        ),
    },
    Rule {
        when: &[Owner(R::Tcmalloc)],
        class: class(
            "tcmalloc",
            C::AllocatorArenas,
            Some(R::Tcmalloc),
            "tcmalloc page heap",
            "tcmalloc",
        ),
    },
    Rule {
        when: &[Owner(R::Mimalloc)],
        class: class(
            "mimalloc",
            C::AllocatorArenas,
            Some(R::Mimalloc),
            "mimalloc segments",
            "mimalloc",
        ),
    },
    Rule {
        when: &[Owner(R::Glibc)],
        class: GLIBC_MALLOC_CLASS,
    },
    Rule {
        when: &[Brk],
        class: GLIBC_MALLOC_CLASS,
    },
    Rule {
        when: &[],
        class: class(
            "other_call_sites",
            C::OtherCallSites,
            None,
            "other call sites",
            "call site",
        ),
    },
];

/// Memory mapped before tracing began: no call site, no rule.
pub const UNTRACED: MemoryClass = class(
    "untraced",
    C::Untraced,
    None,
    "untraced (mapped before tracing)",
    "untraced",
);

/// Every class, each once, in table order (then [`UNTRACED`]).
pub fn all_classes() -> Vec<&'static MemoryClass> {
    let mut out: Vec<&'static MemoryClass> = Vec::new();
    for c in RULES.iter().map(|r| &r.class).chain([&UNTRACED]) {
        if !out.iter().any(|o| o.name == c.name) {
            out.push(c);
        }
    }
    out
}

/// What the ranges of a call site look like, beside its stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    pub kind: Option<EventKind>,
    pub named: bool,
    pub exec: bool,
    pub map_stack: bool,
}

/// The class of a call site: the first rule whose conditions all hold.
pub fn classify(stack: &CallStack, shape: Shape) -> &'static MemoryClass {
    classify_reserved(stack, None, shape)
}

/// The class of a call site that committed into a reservation made by
/// `reservation` (when it did).
pub fn classify_reserved(
    stack: &CallStack,
    reservation: Option<&CallStack>,
    shape: Shape,
) -> &'static MemoryClass {
    let view = View::new(stack);
    let reserved = reservation.map(View::new);
    RULES
        .iter()
        .find(|r| {
            r.when.iter().all(|c| match c {
                ReservedBy(prefixes) => reserved.as_ref().is_some_and(|v| v.calls(prefixes)),
                c => view.holds(c, shape),
            })
        })
        .map_or(&UNTRACED, |r| &r.class)
}

/// A stack with the runtime of each frame, computed once.
struct View<'a> {
    frames: &'a [Frame],
    runtimes: Vec<Option<Runtime>>,
}

impl<'a> View<'a> {
    fn new(stack: &'a CallStack) -> View<'a> {
        View {
            frames: &stack.frames,
            runtimes: stack.frames.iter().map(frame_runtime).collect(),
        }
    }

    /// The runtime of the frame that made the syscall.
    fn owner(&self) -> Option<Runtime> {
        let i = self.frames.iter().position(|f| !f.is_syscall_wrapper())?;
        self.runtimes[i]
    }

    fn calls(&self, prefixes: &[&str]) -> bool {
        self.frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .any(|f| starts_with_any(f, prefixes))
    }

    fn holds(&self, cond: &Cond, shape: Shape) -> bool {
        match cond {
            Named => shape.named,
            ThreadStack => shape.map_stack || self.calls(THREAD_STACK_FUNCS),
            Exec => shape.exec,
            Brk => shape.kind == Some(EventKind::Brk),
            Owner(rt) => self.owner() == Some(*rt),
            OwnerIsAllocator => self.owner().is_some_and(Runtime::is_allocator),
            Calls(prefixes) => self.calls(prefixes),
            Within(rt) => self.runtimes.contains(&Some(*rt)),
            // Decided with the reservation's stack (`classify_reserved`).
            ReservedBy(_) => false,
        }
    }
}

/// The call site of a stack and the machinery frame it called.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller<'a> {
    /// The first frame in a mapped file outside libc, the loader and the
    /// allocation machinery; when the stack holds none (cut short inside
    /// the machinery, or the runtime's own work), the first frame that is
    /// not a syscall wrapper.
    pub call_site: Option<&'a Frame>,
    /// The outermost named machinery frame below the call site (the entry
    /// the code called: `runtime.makeslice`, `PyObject_Malloc`…), else the
    /// innermost one. `None` when the call site made the syscall itself or
    /// the stack holds no call site.
    pub via: Option<&'a Frame>,
}

/// The caller, not the wrapper: see [`Caller`].
pub fn caller(stack: &CallStack) -> Caller<'_> {
    let frames = &stack.frames;
    if let Some(jit) = jit_caller(frames) {
        return jit;
    }
    let looked_past =
        |f: &Frame| f.is_syscall_wrapper() || f.in_runtime_library() || is_machinery(f);
    let Some(i) = frames
        .iter()
        .position(|f| f.module.is_some() && !looked_past(f))
    else {
        return Caller {
            call_site: stack.call_site(),
            via: None,
        };
    };
    let below = frames[..i].iter().filter(|f| !f.is_syscall_wrapper());
    let via = below
        .clone()
        .rev()
        .find(|f| f.function.is_some())
        .or_else(|| below.clone().next());
    Caller {
        call_site: Some(&frames[i]),
        via,
    }
}

/// Perf-map names of code the runtime generates for itself, not for a
/// function of the program.
const GENERIC_JIT: &[&str] = &[
    "Interpreter",
    "StubRoutines",
    "Stub:",
    "Builtin:",
    "BytecodeHandler:",
    "RegExp:",
    "I2C/C2I adapters",
    "MethodHandlesAdapterBlob",
    "RuntimeStub",
    "BufferBlob",
    "AdapterBlob",
    "VtableBlob",
    "SafepointBlob",
    "DeoptimizationBlob",
    "UncommonTrapBlob",
    "ExceptionBlob",
    "vtable chunks",
    "itable stub",
];

/// JIT code named from a perf map (JavaScript, Java methods…) is the
/// program's own code: when everything between the syscall and the
/// innermost such frame is the runtime's (its module, its functions, libc),
/// that frame is the call site, via the outermost allocation machinery
/// frame below it (else the runtime frame it called).
fn jit_caller(frames: &[Frame]) -> Option<Caller<'_>> {
    let jit = |f: &Frame| f.module.as_deref() == Some(crate::stack::perfmap::MODULE);
    // The runtime's own generated code (the JVM's interpreter and stubs,
    // V8's builtins) names no function of the program.
    let generic = |f: &Frame| {
        jit(f)
            && f.function
                .as_deref()
                .is_none_or(|n| starts_with_any(n, GENERIC_JIT))
    };
    let j = frames.iter().position(|f| jit(f) && !generic(f))?;
    let below = &frames[..j];
    let runtimes = |f: &Frame| {
        f.is_syscall_wrapper()
            || f.in_runtime_library()
            || generic(f)
            || frame_runtime(f).is_some()
            || f.module.as_deref().and_then(module_rule).is_some()
    };
    if !below.iter().all(runtimes) {
        return None;
    }
    let named = || {
        below
            .iter()
            .rev()
            .filter(|f| f.function.is_some() && !f.is_syscall_wrapper())
    };
    Some(Caller {
        call_site: Some(&frames[j]),
        via: named().find(|f| is_machinery(f)).or_else(|| named().next()),
    })
}

/// Whether the call site looks past this frame (allocation machinery of a
/// runtime or allocator, or plumbing).
pub fn is_machinery(f: &Frame) -> bool {
    match frame_runtime(f) {
        Some(rt) if rt.is_allocator() => true,
        Some(rt) => match f.function.as_deref() {
            None => true,
            Some(func) => MACHINERY
                .iter()
                .any(|(r, prefixes)| *r == rt && starts_with_any(func, prefixes)),
        },
        None => f
            .function
            .as_deref()
            .is_some_and(|func| starts_with_any(func, PLUMBING)),
    }
}

/// The runtime a frame belongs to: by whole module, then by function
/// name, then (unnamed frames) by module.
pub fn frame_runtime(f: &Frame) -> Option<Runtime> {
    let module = f.module.as_deref();
    let rule = module.and_then(module_rule);
    if let Some(r) = rule.filter(|r| r.whole) {
        return Some(r.runtime);
    }
    match f.function.as_deref() {
        Some(func) => function_runtime(func),
        None => {
            let module = module?;
            rule.map(|r| r.runtime)
                .or_else(|| is_go_module(module).then_some(Runtime::Go))
        }
    }
}

fn function_runtime(func: &str) -> Option<Runtime> {
    if let Some((rt, _)) = FUNCTIONS.iter().find(|(_, p)| starts_with_any(func, p)) {
        return Some(*rt);
    }
    let bare = func.trim_start_matches('_');
    let bare = bare
        .strip_prefix("GI_")
        .unwrap_or(bare)
        .trim_start_matches('_');
    GLIBC_MALLOC.contains(&bare).then_some(Runtime::Glibc)
}

fn module_rule(path: &str) -> Option<&'static ModuleRule> {
    let base = path.rsplit('/').next().unwrap_or(path);
    MODULES.iter().find(|r| {
        r.names.iter().any(|n| match n.strip_suffix('*') {
            Some(prefix) => base.starts_with(prefix),
            None => base == *n,
        })
    })
}

/// Whether the ELF file at `path` is a Go binary (a `.go.buildinfo` or
/// `.gopclntab` section). Only the headers are read, once per path; the
/// file comes from the target, so only regular files are opened.
pub fn is_go_module(path: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = cache.lock().ok().and_then(|c| c.get(path).copied()) {
        return known;
    }
    let go = read_is_go(path).unwrap_or(false);
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_string(), go);
    }
    go
}

fn read_is_go(path: &str) -> Option<bool> {
    use object::Object as _;
    let file = std::fs::File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    Some(
        elf.section_by_name(".go.buildinfo").is_some()
            || elf.section_by_name(".gopclntab").is_some(),
    )
}

fn starts_with_any(func: &str, prefixes: &[&str]) -> bool {
    let q = qualified(func);
    prefixes
        .iter()
        .any(|p| q.starts_with(p) || func.starts_with(p))
}

/// A function's qualified name without what precedes it: the `<` and
/// `T as ` of Rust trait impls (`<T as alloc::vec::…>::from_elem` →
/// `alloc::vec::…`) and C++ return types (`void std::vector<…>::f(…)` →
/// `std::vector<…>::f(…)`).
pub fn qualified(func: &str) -> &str {
    let f = func.trim_start_matches('<');
    let f = f.split_once(" as ").map_or(f, |(_, tr)| tr);
    without_return_type(f)
}

/// A C++ name without its return type: it starts after the last space
/// outside template arguments before the parameter list (`operator new`
/// keeps its space). Rust names have no space outside `<…>`.
fn without_return_type(f: &str) -> &str {
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in f.char_indices() {
        match c {
            '<' | '[' => depth += 1,
            '>' | ']' => depth -= 1,
            '(' if depth == 0 => break,
            ' ' if depth == 0 && !f[..i].ends_with("operator") => start = i + 1,
            _ => {}
        }
    }
    &f[start..]
}

/// A function name without its parameter list, for short labels: the
/// last parenthesized group outside template arguments, when only
/// qualifiers (` const`, ` [clone .part.0]`) follow it. Go receivers
/// (`runtime.(*mheap).grow`) and `(anonymous namespace)` stay.
pub fn short_name(func: &str) -> &str {
    let q = without_return_type(func);
    let (mut angle, mut paren) = (0i32, 0i32);
    let mut last: Option<(usize, usize)> = None;
    let mut open = 0;
    for (i, c) in q.char_indices() {
        match c {
            '<' => angle += 1,
            '>' => angle -= 1,
            '(' if angle == 0 => {
                if paren == 0 {
                    open = i;
                }
                paren += 1;
            }
            ')' if angle == 0 => {
                paren -= 1;
                if paren == 0 {
                    last = Some((open, i));
                }
            }
            _ => {}
        }
    }
    match last {
        Some((open, close)) if q[close + 1..].is_empty() || q[close + 1..].starts_with(' ') => {
            &q[..open]
        }
        _ => q,
    }
}

#[cfg(test)]
mod tests;
