/* CUDA graphs under `fragless run` (part of libfragless_preload.so): when a graph's memory
 * may go back.
 *
 * A block cudaMallocAsync allocates during a stream capture belongs to the capture's
 * graph: the allocator keeps it, even once freed, until fl_graph_release (the graph's
 * launches write it). The C API's and PyTorch's frontends call that when the graph goes;
 * a CUDA program does not know fragless, so the runtime's graph calls tell it here:
 *   - cudaStreamEndCapture: the capture's id (asked before it ends) is noted for the
 *     graph it returns;
 *   - cudaGraphInstantiate*, cudaGraphClone, cudaGraphExecUpdate: what is made from a
 *     graph is noted for its captures too (an exec launches the same addresses; so does a
 *     clone's exec, and an exec updated from the graph);
 *   - cudaGraphExecDestroy, cudaGraphDestroy: the object is dropped; a capture that no
 *     graph or exec notes any more is released on every device's allocator (a capture
 *     none of whose blocks is there costs nothing: fl_graph_release).
 * Before, a program that captured, launched and destroyed graphs again and again held
 * every graph's memory for good. A graph can also live on inside another one (a child
 * graph node, a node's parameters): from the first
 * call of those, no capture is released any more (what fragless did before for all of
 * them), since the embedding is not followed (both forms of cudaGraphAddNode included). Graphs captured before fragless saw a
 * block of theirs, and captures with no block here, are nothing to release. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "allocator/allocator.h"
#include "frontend/frontend.h"
#include "preload/preload.h"

typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
typedef struct CUgraphNode_st *cudaGraphNode_t;

FL_EXPORT cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
FL_EXPORT cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t *graph);
FL_EXPORT cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags);
FL_EXPORT cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags);
FL_EXPORT cudaError_t cudaGraphInstantiateWithParams(cudaGraphExec_t *exec, cudaGraph_t graph, void *params);
FL_EXPORT cudaError_t cudaGraphInstantiateWithParams_ptsz(cudaGraphExec_t *exec, cudaGraph_t graph, void *params);
FL_EXPORT cudaError_t cudaGraphClone(cudaGraph_t *clone, cudaGraph_t graph);
FL_EXPORT cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
FL_EXPORT cudaError_t cudaGraphDestroy(cudaGraph_t graph);
FL_EXPORT cudaError_t cudaGraphAddChildGraphNode(cudaGraphNode_t *node, cudaGraph_t graph, const cudaGraphNode_t *deps,
                                                 size_t n, cudaGraph_t child);
FL_EXPORT cudaError_t cudaGraphExecChildGraphNodeSetParams(cudaGraphExec_t exec, cudaGraphNode_t node, cudaGraph_t child);
FL_EXPORT cudaError_t cudaGraphNodeSetParams(cudaGraphNode_t node, void *params);
FL_EXPORT cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, void *info, void *result);
FL_EXPORT cudaError_t cudaGraphAddNode(void *node, void *graph, void *deps, void *a4, void *a5, void *a6);
FL_EXPORT cudaError_t cudaGraphAddNode_v2(void *node, void *graph, void *deps, void *edges, void *n, void *params);
FL_EXPORT cudaError_t cudaGraphExecNodeSetParams(cudaGraphExec_t exec, cudaGraphNode_t node, void *params);

typedef cudaError_t (*end_capture_fn)(cudaStream_t, cudaGraph_t *);
typedef cudaError_t (*instantiate_fn)(cudaGraphExec_t *, cudaGraph_t, unsigned long long);
typedef cudaError_t (*instantiate_params_fn)(cudaGraphExec_t *, cudaGraph_t, void *);
typedef cudaError_t (*clone_fn)(cudaGraph_t *, cudaGraph_t);
typedef cudaError_t (*destroy_fn)(void *);
typedef cudaError_t (*add_child_fn)(cudaGraphNode_t *, cudaGraph_t, const cudaGraphNode_t *, size_t, cudaGraph_t);
typedef cudaError_t (*three_fn)(void *, void *, void *);
typedef cudaError_t (*two_fn)(void *, void *);
typedef cudaError_t (*four_fn)(void *, void *, void *, void *);
typedef cudaError_t (*five_fn)(void *, void *, void *, void *, void *);
typedef cudaError_t (*six_fn)(void *, void *, void *, void *, void *, void *);
typedef cudaError_t (*version_fn)(int *);

/* The runtime's own (NULL where it has none: the program then gets an error, as from a
 * runtime without the call). */
static struct {
    end_capture_fn end_capture, end_capture_ptsz;
    instantiate_fn instantiate, instantiate_flags;
    instantiate_params_fn instantiate_params, instantiate_params_ptsz;
    clone_fn clone;
    destroy_fn exec_destroy, graph_destroy;
    add_child_fn add_child;
    three_fn exec_child_set, exec_node_set;
    two_fn node_set;
    three_fn exec_update;      /* CUDA 12 on: (exec, graph, result info) */
    four_fn exec_update_11;    /* CUDA 11: (exec, graph, error node, result) */
    six_fn add_node_6;         /* cudaGraphAddNode from CUDA 13 on, cudaGraphAddNode_v2 (12.3-12.x): */
    five_fn add_node_5;        /* (node, graph, deps, edge data, n, params); before 13: no edge data */
    six_fn add_node_v2;
} rt;
static pthread_once_t rt_once = PTHREAD_ONCE_INIT;

#define RT(field, type, name) rt.field = (type)(uintptr_t)dlsym(RTLD_NEXT, name)
static void resolve(void)
{
    RT(end_capture, end_capture_fn, "cudaStreamEndCapture");
    RT(end_capture_ptsz, end_capture_fn, "cudaStreamEndCapture_ptsz");
    RT(instantiate, instantiate_fn, "cudaGraphInstantiate");
    RT(instantiate_flags, instantiate_fn, "cudaGraphInstantiateWithFlags");
    RT(instantiate_params, instantiate_params_fn, "cudaGraphInstantiateWithParams");
    RT(instantiate_params_ptsz, instantiate_params_fn, "cudaGraphInstantiateWithParams_ptsz");
    RT(clone, clone_fn, "cudaGraphClone");
    RT(exec_destroy, destroy_fn, "cudaGraphExecDestroy");
    RT(graph_destroy, destroy_fn, "cudaGraphDestroy");
    RT(add_child, add_child_fn, "cudaGraphAddChildGraphNode");
    RT(exec_child_set, three_fn, "cudaGraphExecChildGraphNodeSetParams");
    RT(exec_node_set, three_fn, "cudaGraphExecNodeSetParams");
    RT(node_set, two_fn, "cudaGraphNodeSetParams");
    /* cudaGraphExecUpdate's arguments changed with CUDA 12: the runtime's version says
     * which it takes. */
    int version = 0;
    version_fn v = (version_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaRuntimeGetVersion");
    if (v && v(&version) == cudaSuccess && version >= 12000)
        RT(exec_update, three_fn, "cudaGraphExecUpdate");
    else if (v && version > 0)
        RT(exec_update_11, four_fn, "cudaGraphExecUpdate");
    /* cudaGraphAddNode took edge data (a sixth argument) with CUDA 13; 12.3-12.x call that
     * form cudaGraphAddNode_v2. */
    if (version >= 13000)
        RT(add_node_6, six_fn, "cudaGraphAddNode");
    else if (version > 0)
        RT(add_node_5, five_fn, "cudaGraphAddNode");
    RT(add_node_v2, six_fn, "cudaGraphAddNode_v2");
}
#undef RT

/* What notes a capture: a graph or an exec (obj), for the allocator of device dev. An
 * object of several captures (an exec updated, a graph captured into twice) has a row
 * for each. */
typedef struct {
    const void *obj;
    uint64_t capture;
    int dev;
} graph_note;

static pthread_mutex_t notes_lock = PTHREAD_MUTEX_INITIALIZER;
/* A fork waits for the notes (a leaf lock), so that a child's graph calls find them whole
 * and free. */
static void notes_prepare(void) { pthread_mutex_lock(&notes_lock); }
static void notes_parent(void) { pthread_mutex_unlock(&notes_lock); }
__attribute__((constructor)) static void notes_atfork(void) { pthread_atfork(notes_prepare, notes_parent, notes_parent); }
static graph_note *notes;
static size_t n_notes, cap_notes;
/* A graph was embedded in another (or host memory ran out for a note): nothing is
 * released from then on. */
static atomic_int kept_for_good;

static void note(const void *obj, uint64_t capture, int dev)
{
    if (n_notes == cap_notes) {
        size_t cap = cap_notes ? 2 * cap_notes : 64;
        graph_note *n = realloc(notes, cap * sizeof *n);
        if (!n) {
            atomic_store(&kept_for_good, 1); /* an object untracked might still launch it */
            return;
        }
        notes = n;
        cap_notes = cap;
    }
    notes[n_notes++] = (graph_note){obj, capture, dev};
}

/* What from notes of `from` for `to` (an exec or a clone made from a graph). */
static void note_as(const void *to, const void *from)
{
    pthread_mutex_lock(&notes_lock);
    size_t n = n_notes;
    for (size_t i = 0; i < n; i++)
        if (notes[i].obj == from)
            note(to, notes[i].capture, notes[i].dev);
    pthread_mutex_unlock(&notes_lock);
}

/* obj is destroyed: its rows go, and each capture no row notes any more is released
 * (outside the lock: a release may synchronize the device). In rounds of up to 16. */
static void drop(const void *obj)
{
    for (;;) {
        graph_note gone[16];
        size_t n_gone = 0, found = 0;
        pthread_mutex_lock(&notes_lock);
        for (size_t i = 0; i < n_notes && n_gone < sizeof gone / sizeof gone[0];) {
            if (notes[i].obj != obj) {
                i++;
                continue;
            }
            found++;
            graph_note r = notes[i];
            notes[i] = notes[--n_notes];
            int still = 0;
            for (size_t k = 0; k < n_notes && !still; k++)
                still = notes[k].capture == r.capture && notes[k].dev == r.dev;
            if (!still)
                gone[n_gone++] = r;
        }
        pthread_mutex_unlock(&notes_lock);
        if (!found)
            return;
        for (size_t i = 0; i < n_gone && !atomic_load(&kept_for_good); i++) {
            fl_allocator *a = fli_frontend_existing(gone[i].dev);
            if (a && fl_graph_release(a, gone[i].capture) != FL_OK && fli_preload_verbose())
                fprintf(stderr, "fragless: the memory of CUDA graph capture 0x%llx on device %d stays kept: %s\n",
                        (unsigned long long)gone[i].capture, gone[i].dev, fl_last_error());
        }
    }
}

/* cudaStreamEndCapture: the capture's id, asked before it ends (of the allocator of the
 * stream's device; `mine` is the stream as fragless names it), is noted for the graph for
 * every device's allocator (a capture's streams may be several devices'). */
static cudaError_t end_capture(end_capture_fn real_end, cudaStream_t mine, cudaStream_t stream, cudaGraph_t *graph)
{
    if (!real_end)
        return cudaErrorUnknown;
    uint64_t capture = 0;
    fl_allocator *a = fli_frontend_existing(fli_preload_alloc_device(mine));
    if (a && fl_stream_capture(a, fli_preload_stream_key(mine), &capture) != FL_OK)
        capture = 0; /* cannot tell: its blocks, if any, stay kept */
    cudaError_t e = real_end(stream, graph);
    if (e == cudaSuccess && capture && graph && *graph) {
        pthread_mutex_lock(&notes_lock);
        for (int d = 0; d < FL_FRONTEND_MAX_DEVICES; d++)
            if (fli_frontend_existing(d))
                note(*graph, capture, d);
        pthread_mutex_unlock(&notes_lock);
    }
    return e;
}

FL_EXPORT cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph)
{
    pthread_once(&rt_once, resolve);
    return end_capture(rt.end_capture, stream, stream, graph);
}

/* A program built with per-thread default streams: NULL is the thread's stream. */
FL_EXPORT cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t *graph)
{
    pthread_once(&rt_once, resolve);
    return end_capture(rt.end_capture_ptsz, stream ? stream : PER_THREAD, stream, graph);
}

static cudaError_t made_from(cudaError_t e, void **made, const void *graph)
{
    if (e == cudaSuccess && made && *made)
        note_as(*made, graph);
    return e;
}

FL_EXPORT cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags)
{
    pthread_once(&rt_once, resolve);
    return rt.instantiate ? made_from(rt.instantiate(exec, graph, flags), (void **)exec, graph) : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags)
{
    pthread_once(&rt_once, resolve);
    return rt.instantiate_flags ? made_from(rt.instantiate_flags(exec, graph, flags), (void **)exec, graph)
                                : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphInstantiateWithParams(cudaGraphExec_t *exec, cudaGraph_t graph, void *params)
{
    pthread_once(&rt_once, resolve);
    return rt.instantiate_params ? made_from(rt.instantiate_params(exec, graph, params), (void **)exec, graph)
                                 : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphInstantiateWithParams_ptsz(cudaGraphExec_t *exec, cudaGraph_t graph, void *params)
{
    pthread_once(&rt_once, resolve);
    return rt.instantiate_params_ptsz
               ? made_from(rt.instantiate_params_ptsz(exec, graph, params), (void **)exec, graph)
               : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphClone(cudaGraph_t *clone, cudaGraph_t graph)
{
    pthread_once(&rt_once, resolve);
    return rt.clone ? made_from(rt.clone(clone, graph), (void **)clone, graph) : cudaErrorUnknown;
}

/* The runtime destroys first (its launches still run: fl_graph_release synchronizes
 * before it gives the blocks back). */
FL_EXPORT cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    pthread_once(&rt_once, resolve);
    cudaError_t e = rt.exec_destroy ? rt.exec_destroy(exec) : cudaErrorUnknown;
    if (e == cudaSuccess)
        drop(exec);
    return e;
}

FL_EXPORT cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    pthread_once(&rt_once, resolve);
    cudaError_t e = rt.graph_destroy ? rt.graph_destroy(graph) : cudaErrorUnknown;
    if (e == cudaSuccess)
        drop(graph);
    return e;
}

/* The exec launches the graph's addresses from now on: it notes the graph's captures too
 * (its old ones stay noted: the update may fail halfway). Declared with CUDA 11's four
 * arguments; a CUDA 12 caller passes three, and the fourth is then not read. */
FL_EXPORT cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, void *info, void *result)
{
    pthread_once(&rt_once, resolve);
    note_as(exec, graph); /* before: the exec may launch it as soon as the call returns */
    return rt.exec_update      ? rt.exec_update(exec, graph, info)
           : rt.exec_update_11 ? rt.exec_update_11(exec, graph, info, result)
                               : cudaErrorUnknown;
}

/* A graph embedded in another (a child graph node added, or a node's parameters made a
 * child graph's): the embedding is not followed, so nothing is released from now on. A
 * conditional node's body graph is the node's: the program never destroys it, so its
 * captures are never released anyway. */
static void embedded(void)
{
    if (!atomic_exchange(&kept_for_good, 1) && fli_preload_verbose())
        fprintf(stderr, "fragless: a CUDA graph was embedded in another: graphs' memory is kept from now on\n");
}

/* cudaGraphNodeParams begins with the node's type (driver_types.h); a child graph is
 * cudaGraphNodeTypeGraph. */
enum { NODE_TYPE_GRAPH = 0x04 };
static void maybe_embedded(const void *params)
{
    if (!params || *(const int *)params == NODE_TYPE_GRAPH)
        embedded();
}

/* The runtime's form by its version (resolve): from CUDA 13 the sixth argument is the
 * parameters; before, the fifth, and a caller passes five (the sixth is then not read:
 * under the x86-64 and AArch64 calling conventions it is a register nobody set). */
FL_EXPORT cudaError_t cudaGraphAddNode(void *node, void *graph, void *deps, void *a4, void *a5, void *a6)
{
    pthread_once(&rt_once, resolve);
    if (rt.add_node_6) {
        maybe_embedded(a6);
        return rt.add_node_6(node, graph, deps, a4, a5, a6);
    }
    if (rt.add_node_5) {
        maybe_embedded(a5);
        return rt.add_node_5(node, graph, deps, a4, a5);
    }
    return cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphAddNode_v2(void *node, void *graph, void *deps, void *edges, void *n, void *params)
{
    pthread_once(&rt_once, resolve);
    maybe_embedded(params);
    return rt.add_node_v2 ? rt.add_node_v2(node, graph, deps, edges, n, params) : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphAddChildGraphNode(cudaGraphNode_t *node, cudaGraph_t graph, const cudaGraphNode_t *deps,
                                                 size_t n, cudaGraph_t child)
{
    pthread_once(&rt_once, resolve);
    embedded();
    return rt.add_child ? rt.add_child(node, graph, deps, n, child) : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphExecChildGraphNodeSetParams(cudaGraphExec_t exec, cudaGraphNode_t node, cudaGraph_t child)
{
    pthread_once(&rt_once, resolve);
    embedded();
    return rt.exec_child_set ? rt.exec_child_set(exec, node, child) : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphNodeSetParams(cudaGraphNode_t node, void *params)
{
    pthread_once(&rt_once, resolve);
    maybe_embedded(params);
    return rt.node_set ? rt.node_set(node, params) : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaGraphExecNodeSetParams(cudaGraphExec_t exec, cudaGraphNode_t node, void *params)
{
    pthread_once(&rt_once, resolve);
    maybe_embedded(params);
    return rt.exec_node_set ? rt.exec_node_set(exec, node, params) : cudaErrorUnknown;
}
