//! The rules on stacks taken from real runs (Go 1.19, OpenJDK 17, node 20,
//! Debian's python3.11 and redis 7 with jemalloc), as memtrace symbolized
//! them.

use super::*;

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const PYTHON: &str = "/usr/bin/python3.11";
const JVM: &str = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so";
const NODE: &str = "/usr/bin/node";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const GO: &str = "/srv/goalloc";
const REDIS: &str = "/usr/bin/redis-server";

/// A stack of (function, module) frames, innermost first; `None` is a
/// frame without a symbol.
fn stack(frames: &[(Option<&str>, &str)]) -> CallStack {
    CallStack {
        frames: frames
            .iter()
            .enumerate()
            .map(|(i, (function, module))| Frame {
                address: 0x1000 + i as u64,
                function: function.map(Into::into),
                file: None,
                line: None,
                module: Some((*module).into()),
                module_offset: Some(0x100 + i as u64),
                inlined: false,
            })
            .collect(),
    }
}

fn named<'a>(module: &'a str, funcs: &[&'a str]) -> Vec<(Option<&'a str>, &'a str)> {
    funcs.iter().map(|f| (Some(*f), module)).collect()
}

fn mmap_in_libc() -> Vec<(Option<&'static str>, &'static str)> {
    vec![(Some("__GI___mmap64"), LIBC), (Some("__GI___mmap64"), LIBC)]
}

fn class_of(s: &CallStack) -> &'static str {
    classify(s, Shape::default()).name
}

/// (call site function or module, via function or module).
fn who(s: &CallStack) -> (String, Option<String>) {
    let c = caller(s);
    let show = |f: &Frame| f.function.clone().unwrap_or_else(|| f.display());
    (c.call_site.map(show).unwrap_or_default(), c.via.map(show))
}

#[test]
fn python_pymalloc_arenas_name_the_caller_of_the_arena_code() {
    // Debian's python3.11 has no symbols for static functions: the arena
    // mmap (_PyObject_ArenaMmap) and new_arena are bare offsets.
    let mut frames = mmap_in_libc();
    frames.extend([(None, PYTHON), (None, PYTHON)]);
    frames.extend(named(
        PYTHON,
        &[
            "_PyObject_GC_NewVar",
            "PyTuple_New",
            "_PyEval_EvalFrameDefault",
        ],
    ));
    let s = stack(&frames);
    assert_eq!(class_of(&s), "cpython_pymalloc");
    assert_eq!(
        who(&s),
        ("PyTuple_New".into(), Some("_PyObject_GC_NewVar".into()))
    );
    // Objects > 512 bytes go to malloc: CPython's, not pymalloc's.
    let mut frames = mmap_in_libc();
    frames.extend(named(
        LIBC,
        &[
            "sysmalloc_mmap",
            "sysmalloc",
            "_int_malloc",
            "__GI___libc_realloc",
        ],
    ));
    frames.extend([(None, PYTHON), (Some("_PyEval_EvalFrameDefault"), PYTHON)]);
    let s = stack(&frames);
    assert_eq!(class_of(&s), "cpython_malloc");
    assert_eq!(
        who(&s),
        (
            "_PyEval_EvalFrameDefault".into(),
            Some("__GI___libc_realloc".into())
        )
    );
}

#[test]
fn go_heap_stacks_and_metadata() {
    let heap_growth = [
        "runtime.sysMmap",
        "runtime.sysMapOS",
        "runtime.sysMap",
        "runtime.(*mheap).grow",
        "runtime.(*mheap).allocSpan",
        "runtime.(*mheap).alloc.func1",
        "runtime.systemstack",
    ];
    // Cut short at the switch to the system stack: no caller reached.
    let s = stack(&named(GO, &heap_growth));
    assert_eq!(class_of(&s), "go_heap");
    assert_eq!(who(&s), ("runtime.sysMmap".into(), None));
    // Unwound through: the Go function that made the slice.
    let mut full = named(GO, &heap_growth);
    full.extend(named(
        GO,
        &[
            "runtime.(*mheap).alloc",
            "runtime.(*mcache).allocLarge",
            "runtime.mallocgc",
            "runtime.makeslice",
            "main.buildIndex",
            "main.main",
        ],
    ));
    let s = stack(&full);
    assert_eq!(class_of(&s), "go_heap");
    assert_eq!(
        who(&s),
        ("main.buildIndex".into(), Some("runtime.makeslice".into()))
    );
    // Page tables grown while the heap grows are metadata.
    let s = stack(&named(
        GO,
        &[
            "runtime.sysMmap",
            "runtime.sysMap",
            "runtime.(*pageAlloc).sysGrow",
            "runtime.(*pageAlloc).grow",
            "runtime.(*mheap).grow",
        ],
    ));
    assert_eq!(class_of(&s), "go_metadata");
    // cgo: the runtime maps through libc's mmap, from its C shim.
    let mut cgo = mmap_in_libc();
    cgo.extend(named(
        GO,
        &["x_cgo_mmap", "runtime.mmap.func1", "runtime.systemstack"],
    ));
    assert_eq!(class_of(&stack(&cgo)), "go_heap");
    let s = stack(&named(
        GO,
        &[
            "runtime.sysMmap",
            "runtime.sysAllocOS",
            "runtime.sysAlloc",
            "runtime.persistentalloc1",
            "runtime.persistentalloc",
            "runtime.(*fixalloc).alloc",
        ],
    ));
    assert_eq!(class_of(&s), "go_metadata");
    let s = stack(&named(
        GO,
        &[
            "runtime.sysMmap",
            "runtime.sysMap",
            "runtime.(*mheap).grow",
            "runtime.(*mheap).allocSpan",
            "runtime.(*mheap).allocManual",
            "runtime.stackpoolalloc",
            "runtime.stackalloc",
            "runtime.malg",
            "runtime.newproc1",
        ],
    ));
    let class = classify(&s, Shape::default());
    assert_eq!(
        (class.name, class.category),
        ("go_stacks", SiteCategory::ThreadStacks)
    );
}

#[test]
fn jvm_memory_as_native_memory_tracking_groups_it() {
    let commit = [
        "os::pd_commit_memory_or_exit(char*, unsigned long, unsigned long, bool, char const*)",
        "os::commit_memory_or_exit(char*, unsigned long, unsigned long, bool, char const*)",
        "G1PageBasedVirtualSpace::commit(unsigned long, unsigned long)",
    ];
    let mut heap = mmap_in_libc();
    heap.extend(named(JVM, &commit));
    heap.extend(named(
        JVM,
        &[
            "G1RegionsLargerThanCommitSizeMapper::commit_regions(unsigned int, unsigned long, WorkGang*)",
            "HeapRegionManager::commit_regions(unsigned int, unsigned long, WorkGang*)",
            "HeapRegionManager::expand(unsigned int, unsigned int, WorkGang*)",
            "G1CollectedHeap::expand(unsigned long, WorkGang*, double*)",
            "G1CollectedHeap::initialize()",
            "universe_init()",
        ],
    ));
    let s = stack(&heap);
    assert_eq!(class_of(&s), "jvm_heap");
    // The same commit path into a reservation G1 made for aux data (a mark
    // bitmap) is GC data, as NMT counts it; into the heap's, Java heap.
    let reserve = [
        "os::pd_reserve_memory(unsigned long, bool)",
        "os::reserve_memory(unsigned long, bool, MEMFLAGS)",
        "ReservedSpace::reserve(unsigned long, unsigned long, unsigned long, char*, bool)",
    ];
    let mut aux = mmap_in_libc();
    aux.extend(named(JVM, &reserve));
    aux.extend(named(
        JVM,
        &[
            "G1CollectedHeap::create_aux_memory_mapper(char const*, unsigned long, unsigned long)",
            "G1CollectedHeap::initialize()",
        ],
    ));
    let mut heap_reservation = mmap_in_libc();
    heap_reservation.extend(named(JVM, &reserve));
    heap_reservation.extend(named(
        JVM,
        &[
            "ReservedHeapSpace::ReservedHeapSpace(unsigned long, unsigned long, unsigned long, char const*)",
            "Universe::reserve_heap(unsigned long, unsigned long)",
        ],
    ));
    let reserved_in = |r: &CallStack| classify_reserved(&s, Some(r), Shape::default()).name;
    assert_eq!(reserved_in(&stack(&aux)), "jvm_gc");
    assert_eq!(reserved_in(&stack(&heap_reservation)), "jvm_heap");
    assert_eq!(
        who(&s),
        (
            "universe_init()".into(),
            Some("G1CollectedHeap::initialize()".into())
        )
    );
    let mut bitmap = mmap_in_libc();
    bitmap.extend(named(JVM, &commit));
    bitmap.extend(named(
        JVM,
        &["G1RegionsSmallerThanCommitSizeMapper::commit_regions(unsigned int, unsigned long, WorkGang*)"],
    ));
    assert_eq!(class_of(&stack(&bitmap)), "jvm_gc");
    let mut meta = mmap_in_libc();
    meta.extend(named(
        JVM,
        &[
            "os::pd_commit_memory(char*, unsigned long, bool)",
            "metaspace::VirtualSpaceNode::commit_range(MetaWordImpl**, unsigned long)",
            "Metaspace::allocate(ClassLoaderData*, unsigned long, MetaspaceObj::Type, JavaThread*)",
            "ConstantPool::allocate(ClassLoaderData*, int, JavaThread*)",
        ],
    ));
    let s = stack(&meta);
    assert_eq!(class_of(&s), "jvm_metaspace");
    assert_eq!(
        who(&s).0,
        "ConstantPool::allocate(ClassLoaderData*, int, JavaThread*)"
    );
    let mut code = mmap_in_libc();
    code.extend(named(
        JVM,
        &[
            "os::pd_commit_memory(char*, unsigned long, unsigned long, bool)",
            "VirtualSpace::expand_by(unsigned long, bool)",
            "CodeHeap::reserve(ReservedSpace, unsigned long, unsigned long)",
        ],
    ));
    let class = classify(
        &stack(&code),
        Shape {
            exec: true,
            ..Shape::default()
        },
    );
    assert_eq!(
        (class.name, class.category),
        ("jvm_code_cache", SiteCategory::JitCode)
    );
    // A direct ByteBuffer: malloc'd by the JVM for Java code (JIT frames
    // have no module).
    let mut direct = mmap_in_libc();
    direct.extend(named(
        LIBC,
        &[
            "sysmalloc_mmap",
            "sysmalloc",
            "_int_malloc",
            "__GI___libc_malloc",
        ],
    ));
    direct.extend(named(
        JVM,
        &[
            "os::malloc(unsigned long, MEMFLAGS)",
            "Unsafe_AllocateMemory0",
        ],
    ));
    let mut s = stack(&direct);
    s.frames.push(Frame {
        function: None,
        module: None,
        module_offset: None,
        ..s.frames[0].clone()
    });
    let class = classify(&s, Shape::default());
    assert_eq!(
        (class.name, class.category),
        ("jvm_direct_memory", SiteCategory::AllocatorArenas)
    );
    assert_eq!(
        who(&s),
        (
            "Unsafe_AllocateMemory0".into(),
            Some("os::malloc(unsigned long, MEMFLAGS)".into())
        )
    );
    // pthread stacks of JVM threads.
    let mut thread = mmap_in_libc();
    thread.extend(named(
        LIBC,
        &["allocate_stack", "pthread_create@@GLIBC_2.34"],
    ));
    thread.extend(named(
        JVM,
        &["os::create_thread(Thread*, os::ThreadType, unsigned long)"],
    ));
    let s = stack(&thread);
    let class = classify(
        &s,
        Shape {
            map_stack: true,
            ..Shape::default()
        },
    );
    assert_eq!(class.name, "jvm_thread_stacks");
}

#[test]
fn v8_array_buffers_are_malloc_memory_not_the_js_heap() {
    let malloc = [
        "sysmalloc_mmap",
        "sysmalloc",
        "_int_malloc",
        "__GI___libc_malloc",
    ];
    let mut frames = mmap_in_libc();
    frames.extend(named(LIBC, &malloc));
    frames.extend(named(
        NODE,
        &[
            "node::NodeArrayBufferAllocator::AllocateUninitialized(unsigned long)",
            "v8::internal::Heap::AllocateExternalBackingStore(std::function<void* (unsigned long)> const&, unsigned long)",
            "v8::internal::BackingStore::Allocate(v8::internal::Isolate*, unsigned long, v8::internal::SharedFlag, v8::internal::InitializedFlag)",
            "v8::ArrayBuffer::NewBackingStoreForNodeLTS(v8::Isolate*, unsigned long)",
            "node::Buffer::(anonymous namespace)::CreateUnsafeArrayBuffer(v8::FunctionCallbackInfo<v8::Value> const&)",
            "v8::internal::FunctionCallbackArguments::Call(v8::internal::CallHandlerInfo)",
        ],
    ));
    let s = stack(&frames);
    let class = classify(&s, Shape::default());
    assert_eq!(
        (class.name, class.category),
        ("v8_array_buffers", SiteCategory::AllocatorArenas)
    );
    let (at, via) = who(&s);
    assert_eq!(
        (short_name(&at), via.as_deref().map(short_name)),
        (
            "node::Buffer::(anonymous namespace)::CreateUnsafeArrayBuffer",
            Some("v8::ArrayBuffer::NewBackingStoreForNodeLTS")
        )
    );
    // operator new in V8: V8's malloc'd memory, named for the V8 code.
    let mut frames = mmap_in_libc();
    frames.extend(named(LIBC, &malloc));
    frames.extend(named(
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
        &["operator new(unsigned long)"],
    ));
    frames.extend(named(
        NODE,
        &[
            "void std::vector<v8::internal::Object, std::allocator<v8::internal::Object> >::_M_realloc_insert<v8::internal::Object const&>(__gnu_cxx::__normal_iterator<v8::internal::Object*, std::vector<v8::internal::Object, std::allocator<v8::internal::Object> > >, v8::internal::Object const&)",
            "v8::internal::(anonymous namespace)::IterateObjectCache(v8::internal::Isolate*, std::vector<v8::internal::Object, std::allocator<v8::internal::Object> >*, v8::internal::Root, v8::internal::RootVisitor*)",
        ],
    ));
    let s = stack(&frames);
    assert_eq!(class_of(&s), "v8_malloc");
    let (at, via) = who(&s);
    assert_eq!(
        (short_name(&at), via.as_deref().map(short_name)),
        (
            "v8::internal::(anonymous namespace)::IterateObjectCache",
            Some(
                "std::vector<v8::internal::Object, std::allocator<v8::internal::Object> >::_M_realloc_insert<v8::internal::Object const&>"
            )
        )
    );
    // V8 maps its heap pages itself.
    let mut frames = mmap_in_libc();
    frames.extend(named(
        NODE,
        &[
            "v8::base::OS::Allocate(void*, unsigned long, unsigned long, v8::base::OS::MemoryPermission)",
            "v8::internal::VirtualMemory::VirtualMemory(v8::PageAllocator*, unsigned long, void*, unsigned long, v8::PageAllocator::Permission)",
            "v8::internal::MemoryAllocator::AllocateAlignedMemory(unsigned long, unsigned long, unsigned long, v8::internal::Executability, void*, v8::internal::VirtualMemory*)",
        ],
    ));
    let s = stack(&frames);
    assert_eq!(class_of(&s), "v8_heap");
    let exec = classify(
        &s,
        Shape {
            exec: true,
            ..Shape::default()
        },
    );
    assert_eq!(exec.name, "v8_code");
}

#[test]
fn stripped_jemalloc_is_told_by_its_module() {
    // redis: twelve frames inside libjemalloc, no symbols.
    let mut frames = mmap_in_libc();
    frames.extend((0..10).map(|_| (None, JEMALLOC)));
    let cut = stack(&frames);
    let class = classify(&cut, Shape::default());
    assert_eq!(
        (class.name, class.runtime),
        ("jemalloc", Some(Runtime::Jemalloc))
    );
    assert_eq!(who(&cut).1, None, "no caller reached: no via");
    // Reaching redis: the code past its zmalloc wrappers.
    frames.push((Some("malloc"), JEMALLOC));
    frames.extend(named(
        REDIS,
        &[
            "ztrymalloc_usable",
            "zmalloc_usable",
            "_sdsnewlen",
            "createStringObject",
            "debugCommand",
        ],
    ));
    let s = stack(&frames);
    assert_eq!(class_of(&s), "jemalloc");
    assert_eq!(
        who(&s),
        ("_sdsnewlen".into(), Some("zmalloc_usable".into()))
    );
    let tc = stack(&[
        (Some("__GI___mmap64"), LIBC),
        (
            None,
            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.9",
        ),
        (Some("app_alloc"), "/srv/app"),
    ]);
    assert_eq!(class_of(&tc), "tcmalloc");
    assert_eq!(who(&tc).0, "app_alloc");
}

#[test]
fn plain_code_and_glibc_malloc() {
    let s = stack(&[
        (Some("__GI___mmap64"), LIBC),
        (Some("app::map_file"), "/srv/app"),
        (Some("app::main"), "/srv/app"),
    ]);
    assert_eq!(class_of(&s), "other_call_sites");
    assert_eq!(who(&s), ("app::map_file".into(), None));
    let s = stack(&[
        (Some("__brk"), LIBC),
        (Some("__GI___sbrk"), LIBC),
        (Some("__glibc_morecore"), LIBC),
        (Some("sysmalloc"), LIBC),
        (Some("__libc_calloc"), LIBC),
        (Some("__rust_alloc_zeroed"), "/srv/app"),
        (Some("app::load"), "/srv/app"),
    ]);
    assert_eq!(class_of(&s), "glibc_malloc");
    assert_eq!(
        who(&s),
        ("app::load".into(), Some("__rust_alloc_zeroed".into()))
    );
    // A brk without a stack is still the malloc heap.
    let brk = classify(
        &CallStack::default(),
        Shape {
            kind: Some(EventKind::Brk),
            ..Shape::default()
        },
    );
    assert_eq!(brk.name, "glibc_malloc");
    assert_eq!(
        classify(&CallStack::default(), Shape::default()).name,
        "other_call_sites"
    );
}

#[test]
fn names_without_return_types_and_parameters() {
    assert_eq!(
        qualified("void std::vector<int, std::allocator<int> >::push_back(int const&)"),
        "std::vector<int, std::allocator<int> >::push_back(int const&)"
    );
    assert_eq!(
        qualified("<T as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"),
        "alloc::vec::spec_from_elem::SpecFromElem>::from_elem"
    );
    assert_eq!(
        qualified("operator new(unsigned long)"),
        "operator new(unsigned long)"
    );
    assert_eq!(
        qualified(
            "v8::internal::MaybeHandle<v8::internal::Object> v8::internal::(anonymous namespace)::HandleApiCallHelper<false>(v8::internal::Isolate*)"
        ),
        "v8::internal::(anonymous namespace)::HandleApiCallHelper<false>(v8::internal::Isolate*)"
    );
    assert_eq!(short_name("runtime.(*mheap).grow"), "runtime.(*mheap).grow");
    assert_eq!(
        short_name("current_stack_region(unsigned char**, unsigned long*) [clone .part.0]"),
        "current_stack_region"
    );
    assert_eq!(short_name("Foo::bar(int) const"), "Foo::bar");
    assert_eq!(short_name("main.buildIndex"), "main.buildIndex");
}

#[test]
fn the_table_is_consistent_and_documented() {
    let classes = all_classes();
    for rule in RULES {
        let c = &rule.class;
        let first = classes
            .iter()
            .find(|k| k.name == c.name)
            .expect("every class is listed");
        assert_eq!(
            (first.category, first.runtime, first.label, first.short),
            (c.category, c.runtime, c.label, c.short),
            "class {} is defined the same everywhere",
            c.name
        );
        assert!(c.short.chars().count() <= 16, "{} too long", c.short);
        assert!(c.label.chars().count() <= 48, "{} too long", c.label);
    }
    assert!(
        RULES.last().is_some_and(|r| r.when.is_empty()),
        "the last rule matches everything"
    );
    // The schema lists every sub-category; the docs name each.
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/memtrace.schema.json"))
            .expect("the schema is JSON");
    let listed: Vec<&str> = schema["$defs"]["subcategory_name"]["enum"]
        .as_array()
        .expect("$defs.subcategory_name.enum")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let names: Vec<&str> = classes.iter().map(|c| c.name).collect();
    assert_eq!(listed, names, "docs/memtrace.schema.json subcategory_name");
    let docs = include_str!("../../../../docs/json-schema.md");
    for name in names {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/json-schema.md names {name}"
        );
    }
}

/// One named frame in `module`.
fn one_frame(function: &str, module: &str) -> Frame {
    stack(&[(Some(function), module)]).frames.remove(0)
}

#[test]
fn the_caller_is_past_libc_and_allocator_plumbing() {
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let exe = "/srv/app";
    let stack = CallStack {
        frames: vec![
            one_frame("__GI___mmap64", libc),
            one_frame("sysmalloc", libc),
            one_frame("__libc_calloc", libc),
            one_frame("<alloc::raw_vec::RawVecInner>::try_allocate_in", exe),
            one_frame(
                "<T as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
                exe,
            ),
            one_frame("app::load_table", exe),
            one_frame("app::main", exe),
        ],
    };
    assert_eq!(
        caller(&stack).call_site.and_then(|f| f.function.as_deref()),
        Some("app::load_table")
    );
    assert_eq!(
        stack.call_site().and_then(|f| f.function.as_deref()),
        Some("sysmalloc")
    );
    let only_libc = CallStack {
        frames: vec![
            one_frame("__GI___mmap64", libc),
            one_frame("_dl_map_segments", "/lib/ld-linux-x86-64.so.2"),
        ],
    };
    assert_eq!(
        caller(&only_libc)
            .call_site
            .and_then(|f| f.function.as_deref()),
        Some("_dl_map_segments")
    );
}

#[test]
fn jit_code_named_from_a_perf_map_is_the_call_site() {
    // node --perf-basic-prof --interpreted-frames-native-stack: a
    // `new ArrayBuffer` in the JS function growArrays (node 20's frames).
    let jit = crate::stack::perfmap::MODULE;
    let mut frames = mmap_in_libc();
    frames.extend(named(
        LIBC,
        &[
            "sysmalloc_mmap",
            "sysmalloc",
            "_int_malloc",
            "__libc_calloc",
        ],
    ));
    frames.extend(named(
        NODE,
        &[
            "node::NodeArrayBufferAllocator::Allocate(unsigned long)",
            "v8::internal::Heap::AllocateExternalBackingStore(std::function<void* (unsigned long)> const&, unsigned long)",
            "v8::internal::BackingStore::Allocate(v8::internal::Isolate*, unsigned long, v8::internal::SharedFlag, v8::internal::InitializedFlag)",
            "v8::internal::(anonymous namespace)::ConstructBuffer(v8::internal::Isolate*)",
            "v8::internal::Builtin_ArrayBufferConstructor(int, unsigned long*, v8::internal::Isolate*)",
            "Builtins_CEntry_Return1_ArgvOnStack_BuiltinExit",
            "Builtins_JSBuiltinsConstructStub",
            "Builtins_ConstructHandler",
        ],
    ));
    frames.extend(named(
        jit,
        &["JS:~growArrays /srv/w.js:1:20", "JS:~ /srv/w.js:1:1"],
    ));
    frames.extend(named(
        NODE,
        &["Builtins_JSEntryTrampoline", "node::Start(int, char**)"],
    ));
    let s = stack(&frames);
    assert_eq!(class_of(&s), "v8_array_buffers");
    let (at, via) = who(&s);
    assert_eq!(at, "JS:~growArrays /srv/w.js:1:20");
    assert_eq!(
        via.as_deref().map(short_name),
        Some("v8::internal::BackingStore::Allocate")
    );

    // A JIT frame above application code (a native addon) is not the call
    // site: the addon is.
    let mut frames = mmap_in_libc();
    frames.extend(named("/srv/addon.node", &["addon::grow()"]));
    frames.extend(named(jit, &["JS:~growArrays /srv/w.js:1:20"]));
    let (at, _) = who(&stack(&frames));
    assert_eq!(at, "addon::grow()");
}

#[test]
fn the_runtimes_own_generated_code_is_not_a_call_site() {
    // The JVM's perf map names the interpreter and stubs, not the Java
    // method: the JNI entry stays the call site.
    let jit = crate::stack::perfmap::MODULE;
    let mut frames = mmap_in_libc();
    frames.extend(named(LIBC, &["sysmalloc", "__GI___libc_malloc"]));
    frames.extend(named(
        JVM,
        &[
            "os::malloc(unsigned long, MEMFLAGS)",
            "Unsafe_AllocateMemory0",
        ],
    ));
    frames.extend(named(
        jit,
        &["Interpreter", "Interpreter", "StubRoutines (1)"],
    ));
    frames.extend(named(JVM, &["JavaCalls::call_helper(JavaValue*)"]));
    let (at, via) = who(&stack(&frames));
    assert_eq!(at, "Unsafe_AllocateMemory0");
    assert_eq!(via.as_deref(), Some("os::malloc(unsigned long, MEMFLAGS)"));
}

#[test]
fn category_names_are_the_json_names() {
    for c in SiteCategory::ALL {
        let json = serde_json::to_value(c).expect("a category serializes");
        assert_eq!(json.as_str(), Some(c.name()), "{c:?}");
    }
}
