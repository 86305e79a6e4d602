/*
 * The bridge's native data path (paper §3.2.3; docs/net.md "How an update travels"): BridgeEngine,
 * the common case of src/ombm/net/bridge.py and replica.py in C, one call per turn of the bridge.
 *
 * Python registers each replicated segment whose updates may take this path (one link: the RPC and
 * stream channels between two hosts) with the buffers Replica keeps (shadow, tags, own-write counts,
 * the link's in-sync map; exported, so they cannot move) and its binding's write. run() then loops,
 * without returning to Python, over:
 *   - the bridge's signal FIFO: a unit completed here is either the echo of the bridge's own write
 *     (its count taken) or a local write: delta against the shadow, entries cut to the MTU, packed
 *     into datagrams as transport/datagram.py packs them, sealed with the CRC32C or, with a key,
 *     the keyed BLAKE2b (the reference implementation, net_blake2b.c); runs of full datagrams go
 *     in one sendmsg (UDP_SEGMENT), the others with sendto;
 *   - the UDP socket (recvmmsg, runs of datagrams joined by UDP_GRO taken apart): an UPDATE whose
 *     every entry belongs to a registered segment from its link is validated field by field as
 *     datagram.decode does, passes the replay window, and a whole update is written into the
 *     replica through its Writer (signal-on-write), as Replica.apply does; the parts of a longer
 *     one are gathered first, in place, as transport.updates.Assembler does (docs/net.md "Bulk");
 *   - an adaptive spin that yields (bridge_spin's), then poll() on the socket, the FIFO's doorbell
 *     (the sleep word announced as ombm.aio does) and Python's own descriptors, GIL released.
 * Everything else goes back to Python, which does it as before: a datagram that is not such an
 * UPDATE (control kinds, unknown segments, anything malformed or forged: Python
 * decodes it, counts it, and drops it or acts), a signal of a segment not registered, a RESYNC to
 * ask for, a stalled FIFO cell, a readable Python descriptor, a timer, a POSIX signal. The replay
 * window, the sequence numbers and the tags live here for both paths (the Python path's Sealer and
 * replay checks call in), so the two paths are one sender and one receiver on the wire.
 * Python's path stays the reference: tests/integration/test_net_engine.py compares them.
 */
#include "fifo.h"  /* first: Python.h sets the feature macros */
#include "crc32c.h"
#include "net.h"
#include "net_blake2.h"

#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <netinet/udp.h>
#include <sys/socket.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103           /* <linux/udp.h>: the size of the datagrams one send is cut into */
#endif
#ifndef UDP_GRO
#define UDP_GRO 104               /* <linux/udp.h>: datagrams of one flow handed over joined, their size told */
#endif

#define RECV_BATCH 32             /* datagrams (or joined runs of them, UDP_GRO) per recvmmsg */
#define SEGMENTS_MAX 64           /* datagrams per send with UDP_SEGMENT (the kernel's UDP_MAX_SEGMENTS) */
#define SEGMENTS_BYTES 65507      /* and their bytes, at most (one IPv4 UDP payload) */
#define RECV_SIZE 65536
#define POP_BATCH 1024            /* signals taken per pass (as Bridge._turn's dispatch_pending) */
#define RECV_BATCHES 8            /* recvmmsg calls per pass: MAX_TURN = 256 datagrams, as Python's turn */
#define WINDOW_SIZE 64
#define MAX_SENDERS 1024
#define QUIET_NS 2000ull          /* the spin only polls this long, then yields between polls (bridge.c) */
#define SPIN_FLOOR_NS 2000ull     /* after SPIN_MISSES spins in a row that found nothing (Bridge._spin) */
#define SPIN_MISSES 8
#define SPIN_PROBE 64
#define GAP_WINDOW 16             /* the idle gaps the path's spin budget is learnt from (see SpinPolicy) */
#define PATH_SPIN_MAX_NS 1000000ull  /* no spin longer: a wake-up (10-50 us) is <= 5 % of such a gap */
#define UNSETTLED_POLL_MS 10      /* a claimed, unpublished FIFO cell: look again this soon */
#define PY_CHECK_EVERY 64         /* busy passes between looks at Python's descriptors */

/* what run() reports besides its lists (bits of its last item) */
#define RUN_STALLED 1             /* the FIFO's head cell is claimed and unpublished: retire_stalled */
#define RUN_EMSGSIZE 2            /* a sendto was refused as too long: ask the kernel for the path MTU */
#define RUN_DROPS 4               /* the FIFO dropped signals: own-write counts cleared here, count them */
#define MIN_MTU (DG_HEADER + DG_MAC + DG_ENTRY + 1)  /* room for one byte of one entry, MAC or CRC */
#define PARTIAL_MEMORY (64 << 20) /* the buffers of partial updates, at most (beyond: doomed, see Partial) */
#define SPARE_BUFFERS 4           /* unit buffers kept for the next partial updates (no allocation per update) */

typedef struct {
    struct sockaddr_storage addr;
    socklen_t len;
} Peer;

typedef struct {
    uint64_t key, seg_id;
    unsigned char *base;          /* the bridge's binding */
    Py_ssize_t size, unit, units;
    Py_buffer shadow, tags, own, in_sync;   /* Replica's buffers, exported while registered */
    PyObject *write;              /* the binding's write(offset, data): Region.write */
    Peer link;                    /* the one bridge the segment is replicated with */
    uint64_t heard_ns;            /* the last datagram this path took from it (Path.heard) */
    unsigned char *dirty;         /* a bit per unit: a local write to send */
    Py_ssize_t *dirty_list, ndirty;
} Seg;

typedef struct {
    uint64_t sender, top, seen, used;
} WindowEntry;

/* Where part i of a partial update lies in its segment. */
typedef struct {
    uint64_t offset;
    uint32_t len;
} PartAt;

/* An update that spans several datagrams, being gathered (transport.updates.Assembler's _Pending):
   identified by (sender, key, tag), its parts' bytes put at their place in a buffer the size of
   the unit of the first part that came. A part that cannot belong to a whole update that applies
   (outside its segment, in another unit than the others, past its unit's end; or no memory under
   PARTIAL_MEMORY) makes it *doomed*: nothing more is kept of it but which parts came, and when they
   all came it is counted as Python counts it (inconsistent). So every field is checked once, and no
   part writes outside its update's buffer. */
typedef struct {
    uint64_t sender, key, first_ns, order;
    uint32_t base, tag;
    unsigned parts, got, lowest, highest;  /* and the lowest and highest part that came (got > 0) */
    int full, doomed;
    Py_ssize_t bytes;             /* the parts' bytes (Assembler's size: its bound counts these) */
    uint64_t lo;                  /* the offset of buf[0]: its unit's first byte */
    Py_ssize_t cap;               /* buf's size: the unit's */
    unsigned char *buf, *have;    /* the unit's bytes; a bit per part */
    PartAt *at;                   /* by part */
} Partial;

enum { C_DATAGRAMS_IN, C_DATAGRAMS_OUT, C_BYTES_IN, C_BYTES_OUT, C_UPDATES_IN, C_UPDATES_OUT, C_DROPPED_REPLAY,
       C_DROPPED_STALE, C_DROPPED_DUPLICATE, C_DROPPED_INCONSISTENT, C_SEND_ERRORS, C_INTERNAL_ERRORS,
       C_BUSY_IN_NS, C_BUSY_OUT_NS, C_ECHOES, C_NATIVE_IN, C_NATIVE_OUT, C_DROPPED_INCOMPLETE, C_COUNTS };
static const char *const count_names[C_COUNTS] = {
    "datagrams_in", "datagrams_out", "bytes_in", "bytes_out", "updates_in", "updates_out", "dropped_replay",
    "dropped_stale", "dropped_duplicate", "dropped_inconsistent", "send_errors", "internal_errors",
    "busy_in_ns", "busy_out_ns", "native_echoes", "native_in", "native_out", "dropped_incomplete"};

/* The spin's budget across a path (issue 12; docs/net.md "Spin, then sleep"). A bridge idles
   between the passes of a call for two kinds of gap: a short one (the local server's reply, the
   local client's next call) and one as long as the rest of the round trip across the path. A
   spin that lasts the gap saves a wake-up (and keeps this CPU from halting); a spin shorter than
   the gap is CPU spent for nothing. So the budget is learnt from the gaps themselves: 5/4 of the
   longest of the last GAP_WINDOW gaps no longer than PATH_SPIN_MAX_NS (a gap that ended in a sleep
   counts too, with its wake-up: the next spin then covers it), never below the process's spin cap
   (spin_us). What a spin achieved decides whether to spin at all: SPIN_MISSES spins in a row that
   ended without anything (a quiet link, or a peer that does not get a CPU on a loaded machine)
   drop the budget to SPIN_FLOOR_NS, and every SPIN_PROBE-th spin tries the learnt budget again.
   And while more tasks are runnable than the machine has CPUs (sync.c's machine_overloaded, the
   hint the ends' waits use), a spin as long as a round trip takes a CPU from a task that waits
   for one, maybe the very peer: the bridge then spins its process's cap only, as on one host. */
typedef struct {
    uint64_t gaps[GAP_WINDOW];    /* ns; 0: none yet */
    unsigned at;                  /* next slot of gaps */
    uint64_t learnt_ns;           /* 5/4 of the largest of gaps */
    unsigned misses;              /* spins in a row that ended without anything */
    unsigned long long spins, wins;  /* for the counters: spins made, spins that caught something */
} SpinPolicy;

typedef struct {
    PyObject_HEAD
    PyObject *fifo;               /* the bridge receiver's FifoMap */
    int fd;                       /* the UDP socket (the bridge's; it stays open while we run) */
    uint64_t sender, seq;
    uint32_t tag;
    Py_ssize_t mtu;
    int64_t max_age_us;           /* -1: none (no key) */
    int keyed;                    /* a MAC (the key's state below), else a CRC32C */
    Py_ssize_t trailer;           /* DG_MAC or DG_CRC */
    blake2b_state mac;            /* BLAKE2b with the key's block taken: each MAC starts from a copy */
    Seg **segs;
    Py_ssize_t nsegs, cap;
    WindowEntry *window;
    Py_ssize_t nwindow;
    uint64_t window_clock;
    SpinPolicy spin;
    unsigned char *recv_buf;      /* RECV_BATCH * RECV_SIZE */
    Partial *partials;            /* max_partials of them, npartials in use (Assembler's bounds) */
    Py_ssize_t npartials, max_partials, partial_bytes, max_partial_bytes, partial_memory;
    uint64_t partial_order, partial_timeout_ns;
    unsigned char *spare[SPARE_BUFFERS];
    Py_ssize_t spare_cap[SPARE_BUFFERS];
    unsigned char out[SEGMENTS_BYTES];  /* the datagrams sealed for one send (out_end bytes, out_sealed of
                                     them, each mtu bytes), then the one being packed (out_len bytes so far) */
    Py_ssize_t out_end, out_len;
    unsigned out_count, out_sealed;
    const Peer *out_to;
    int segments;                 /* send runs of full datagrams in one sendmsg (UDP_SEGMENT): 1, or 0 */
    unsigned long long counts[C_COUNTS];
    uint64_t fifo_drops;          /* the FIFO's drop counter when last looked at */
    int flags;
} Engine;

static uint64_t now_us_realtime(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ull + (uint64_t)ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------- registered segments */

static void seg_free(Seg *s) {
    if (!s) return;
    PyBuffer_Release(&s->shadow);
    PyBuffer_Release(&s->tags);
    PyBuffer_Release(&s->own);
    if (s->in_sync.obj) PyBuffer_Release(&s->in_sync);
    Py_XDECREF(s->write);
    PyMem_Free(s->dirty);
    PyMem_Free(s->dirty_list);
    PyMem_Free(s);
}

static Seg *by_key(Engine *e, uint64_t key) {
    for (Py_ssize_t i = 0; i < e->nsegs; i++)
        if (e->segs[i]->key == key) return e->segs[i];
    return NULL;
}

static Seg *by_seg_id(Engine *e, uint64_t id) {
    for (Py_ssize_t i = 0; i < e->nsegs; i++)
        if (e->segs[i]->seg_id == id) return e->segs[i];
    return NULL;
}

/* (ip, port) as a socket address, numerically (as Python's getaddrinfo gave it): 0, or -1 with ValueError. */
static int parse_peer(PyObject *address, Peer *out) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(address, "si", &host, &port)) return -1;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *info = NULL;
    if (getaddrinfo(host, service, &hints, &info) || !info || info->ai_addrlen > sizeof out->addr) {
        if (info) freeaddrinfo(info);
        PyErr_Format(PyExc_ValueError, "BridgeEngine: %s is not a numeric address", host);
        return -1;
    }
    memset(out, 0, sizeof *out);
    memcpy(&out->addr, info->ai_addr, info->ai_addrlen);
    out->len = info->ai_addrlen;
    freeaddrinfo(info);
    return 0;
}

static int same_peer(const Peer *p, const struct sockaddr_storage *a, socklen_t len) {
    if (p->addr.ss_family != a->ss_family) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&p->addr, *y = (const void *)a;
        return len >= sizeof *y && x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)&p->addr, *y = (const void *)a;
        return len >= sizeof *y && x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
    }
    return 0;
}

/* ---------------------------------------------------------------- the replay window (datagram.ReplayWindow) */

static WindowEntry *window_find(Engine *e, uint64_t sender) {
    for (Py_ssize_t i = 0; i < e->nwindow; i++)
        if (e->window[i].sender == sender) return &e->window[i];
    return NULL;
}

/* 0: new; 1: replay; 2: stale (a new sender too far from the clock) */
static int window_check(Engine *e, uint64_t sender, uint64_t seq, uint64_t now_us) {
    WindowEntry *w = window_find(e, sender);
    if (!w) {
        if (e->max_age_us >= 0) {
            uint64_t d = seq > now_us ? seq - now_us : now_us - seq;
            if (d > (uint64_t)e->max_age_us) return 2;
        }
        return 0;
    }
    if (seq > w->top) return 0;
    uint64_t back = w->top - seq;
    return back >= WINDOW_SIZE || (w->seen >> back & 1) ? 1 : 0;
}

static void window_commit(Engine *e, uint64_t sender, uint64_t seq) {
    WindowEntry *w = window_find(e, sender);
    if (!w) {
        if (e->nwindow == MAX_SENDERS) {  /* the least recently committed goes */
            Py_ssize_t old = 0;
            for (Py_ssize_t i = 1; i < e->nwindow; i++)
                if (e->window[i].used < e->window[old].used) old = i;
            e->window[old] = e->window[--e->nwindow];
        }
        w = &e->window[e->nwindow++];
        w->sender = sender;
        w->top = seq;
        w->seen = 1;
    } else if (seq > w->top) {
        uint64_t shift = seq - w->top;
        w->seen = shift < WINDOW_SIZE ? (w->seen << shift) | 1 : 1;
        w->top = seq;
    } else {
        w->seen |= 1ull << (w->top - seq);
    }
    w->used = ++e->window_clock;
}

static void window_forget(Engine *e, uint64_t sender) {
    WindowEntry *w = window_find(e, sender);
    if (w) *w = e->window[--e->nwindow];
}

/* ---------------------------------------------------------------- the MAC (datagram._mac) */

static const char PERSON[] = "ombm-bridge-v1";  /* datagram._PERSON */

/* BLAKE2b, 16-byte digest, keyed and personalised as hashlib.blake2b(key=key, digest_size=16,
   person=PERSON): the state once the key's block is taken. 0, or -1 for a key of a bad length. */
static int mac_init(blake2b_state *S, const unsigned char *key, size_t keylen) {
    if (keylen < 1 || keylen > BLAKE2B_KEYBYTES) return -1;
    blake2b_param P;
    memset(&P, 0, sizeof P);
    P.digest_length = DG_MAC;
    P.key_length = (uint8_t)keylen;
    P.fanout = 1;
    P.depth = 1;
    memcpy(P.personal, PERSON, sizeof PERSON - 1);
    if (blake2b_init_param(S, &P) < 0) return -1;
    uint8_t block[BLAKE2B_BLOCKBYTES] = {0};
    memcpy(block, key, keylen);
    blake2b_update(S, block, sizeof block);
    memset(block, 0, sizeof block);
    return 0;
}

static void mac_of(const blake2b_state *keyed, const unsigned char *data, size_t n, unsigned char out[DG_MAC]) {
    blake2b_state S = *keyed;
    blake2b_update(&S, data, n);
    blake2b_final(&S, out, DG_MAC);
}

/* The trailer of d[0:end] (CRC32C or MAC) written at d + end. */
static void seal(const Engine *e, unsigned char *d, Py_ssize_t end) {
    if (e->keyed) mac_of(&e->mac, d, (size_t)end, d + end);
    else put32(d + end, crc32c_copy(NULL, d, (size_t)end, 0));
}

/* Whether the trailer of d[0:n] (flags checked) is right: the end of the body, or 0. */
static Py_ssize_t opened(const Engine *e, const unsigned char *d, Py_ssize_t n) {
    if (e->keyed) {
        Py_ssize_t end = n - DG_MAC;
        if (end < DG_HEADER) return 0;
        unsigned char want[DG_MAC], diff = 0;
        mac_of(&e->mac, d, (size_t)end, want);
        for (int i = 0; i < DG_MAC; i++) diff |= want[i] ^ d[end + i];  /* constant time, as hmac.compare_digest */
        return diff ? 0 : end;
    }
    Py_ssize_t end = n - DG_CRC;
    return crc32c_copy(NULL, d, (size_t)end, 0) == get32(d + end) ? end : 0;
}

/* ---------------------------------------------------------------- datagrams out */

static uint64_t next_seq(Engine *e) {
    uint64_t now = now_us_realtime();
    e->seq = e->seq + 1 > now ? e->seq + 1 : now;
    return e->seq;
}

static uint32_t next_tag(Engine *e) {
    e->tag = e->tag + 1 ? e->tag + 1 : 1;
    return e->tag;
}

/* Send the sealed datagrams to out_to: one sendmsg, cut by the kernel into datagrams of mtu bytes
   (UDP_SEGMENT: through a veth to a socket with UDP_GRO they travel joined, as TCP's segments do),
   or one sendto each where the kernel refuses that (it is then not asked again). */
static void send_sealed(Engine *e) {
    if (!e->out_sealed) return;
    const Peer *to = e->out_to;
    Py_ssize_t at = 0, n = e->out_end, each = e->out_sealed > 1 ? e->mtu : n;
    if (e->out_sealed > 1 && e->segments) {
        union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } control;
        memset(&control, 0, sizeof control);
        struct iovec iov = {.iov_base = e->out, .iov_len = (size_t)n};
        struct msghdr mh = {.msg_name = (void *)&to->addr, .msg_namelen = to->len, .msg_iov = &iov, .msg_iovlen = 1,
                            .msg_control = control.buf, .msg_controllen = sizeof control.buf};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)e->mtu;
        memcpy(CMSG_DATA(cm), &size, sizeof size);
        ssize_t sent;
        do sent = sendmsg(e->fd, &mh, 0);
        while (sent < 0 && errno == EINTR);
        if (sent >= 0) {
            e->counts[C_DATAGRAMS_OUT] += e->out_sealed;
            e->counts[C_BYTES_OUT] += (unsigned long long)n;
            n = 0;
        } else if (errno == EINVAL || errno == EIO || errno == ENOPROTOOPT || errno == EOPNOTSUPP) {
            e->segments = 0;  /* this kernel or path does not cut sends: one datagram per send */
        } else {
            e->counts[C_SEND_ERRORS] += e->out_sealed;
            if (errno == EMSGSIZE) e->flags |= RUN_EMSGSIZE;
            n = 0;
        }
    }
    for (; at < n; at += each) {
        Py_ssize_t len = n - at < each ? n - at : each;
        ssize_t sent;
        do sent = sendto(e->fd, e->out + at, (size_t)len, 0, (const struct sockaddr *)&to->addr, to->len);
        while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            e->counts[C_SEND_ERRORS]++;
            if (errno == EMSGSIZE) e->flags |= RUN_EMSGSIZE;
        } else {
            e->counts[C_DATAGRAMS_OUT]++;
            e->counts[C_BYTES_OUT] += (unsigned long long)len;
        }
    }
    e->out_end = 0;
    e->out_sealed = 0;
}

/* A datagram of n bytes was sealed at out_end: it waits for the datagrams after it if it is a whole
   mtu long (one send takes a run of such, and one shorter last), else goes now. */
static void sealed(Engine *e, Py_ssize_t n) {
    e->out_end += n;
    e->out_sealed++;
    if (!e->segments || n != e->mtu || e->out_sealed == SEGMENTS_MAX || e->out_end + e->mtu > SEGMENTS_BYTES)
        send_sealed(e);
}

/* Seal what is packed (Sealer.seal with a CRC32C or the MAC), then as sealed(). */
static void flush_out(Engine *e) {
    if (!e->out_count) return;
    unsigned char *h = e->out + e->out_end;
    put16(h, DG_MAGIC);
    h[2] = DG_VERSION;
    h[3] = DG_KIND_UPDATE;
    put16(h + 4, e->keyed ? DG_FLAG_MAC : 0);
    put16(h + 6, (uint16_t)e->out_count);
    put64(h + 8, e->sender);
    put64(h + 16, next_seq(e));
    seal(e, h, e->out_len);
    Py_ssize_t n = e->out_len + e->trailer;
    e->out_len = DG_HEADER;
    e->out_count = 0;
    sealed(e, n);
}

/* Everything packed goes now. */
static void send_all(Engine *e) {
    flush_out(e);
    send_sealed(e);
}

/* An entry's header (DG_ENTRY bytes) at p: where its bytes go, which part of which update. */
static void put_entry(unsigned char *p, uint64_t key, uint64_t offset, uint32_t base, uint32_t tag,
                      uint16_t part, uint16_t parts, int full, Py_ssize_t len) {
    put64(p, key);
    put64(p + 8, offset);
    put32(p + 16, base);
    put32(p + 20, tag);
    put16(p + 24, (uint16_t)len);
    put16(p + 26, part);
    put16(p + 28, parts);
    put16(p + 30, full ? DG_ENTRY_FULL : 0);
}

/* Add one entry (Packer.add): the packed ones go first if it does not fit, or go elsewhere. */
static void pack_entry(Engine *e, const Peer *to, uint64_t key, uint64_t offset, uint32_t base, uint32_t tag,
                       uint16_t part, uint16_t parts, int full, const unsigned char *data, Py_ssize_t len) {
    Py_ssize_t room = e->mtu - DG_HEADER - e->trailer;
    if (e->out_to != to) send_all(e);
    else if (e->out_count && (e->out_len - DG_HEADER + DG_ENTRY + len > room || e->out_count == 0xFFFF)) flush_out(e);
    e->out_to = to;
    unsigned char *p = e->out + e->out_end + e->out_len;
    put_entry(p, key, offset, base, tag, part, parts, full, len);
    memcpy(p + DG_ENTRY, data, (size_t)len);
    e->out_len += DG_ENTRY + len;
    e->out_count++;
}

/* An entry that fills a datagram alone (a part of a long update), without a key: the datagram made
   at once, its CRC32C computed in the pass that copies the entry's bytes in (as pack_entry, then
   flush_out, would make it). */
static void pack_alone(Engine *e, const Peer *to, uint64_t key, uint64_t offset, uint32_t base, uint32_t tag,
                       uint16_t part, uint16_t parts, int full, const unsigned char *data, Py_ssize_t len) {
    if (e->out_to != to) send_all(e);
    else flush_out(e);  /* what is packed goes first */
    e->out_to = to;
    unsigned char *h = e->out + e->out_end, *p = h + DG_HEADER;
    put16(h, DG_MAGIC);
    h[2] = DG_VERSION;
    h[3] = DG_KIND_UPDATE;
    put16(h + 4, 0);
    put16(h + 6, 1);
    put64(h + 8, e->sender);
    put64(h + 16, next_seq(e));
    put_entry(p, key, offset, base, tag, part, parts, full, len);
    uint32_t crc = crc32c_copy(NULL, h, DG_HEADER + DG_ENTRY, 0);
    crc = crc32c_copy(p + DG_ENTRY, data, (size_t)len, crc);
    put32(p + DG_ENTRY + len, crc);
    sealed(e, DG_HEADER + DG_ENTRY + len + DG_CRC);
}

/* A local write completed unit u: its new content to the link (Replica.local_update, one link). */
static void send_unit(Engine *e, Seg *s, Py_ssize_t u) {
    Py_ssize_t lo = u * s->unit, hi = lo + s->unit < s->size ? lo + s->unit : s->size;
    Py_ssize_t last = hi - lo - 1;
    unsigned char *shadow = s->shadow.buf;
    uint32_t *tags = s->tags.buf;
    unsigned char *in_sync = s->in_sync.buf;
    Py_ssize_t changed = delta_copy(s->base + lo, shadow + lo, hi - lo);
    uint32_t base = tags[u], tag = next_tag(e);
    Py_ssize_t at;
    int full;
    if (in_sync[u] && base) {
        at = lo + (changed < last ? changed : last);
        full = 0;
    } else {
        Py_ssize_t z = 0;
        while (z < last && !shadow[lo + z]) z++;
        at = lo + z;
        full = 1;
        base = 0;
        in_sync[u] = 1;
    }
    tags[u] = tag;
    Py_ssize_t len = hi - at, room = e->mtu - DG_HEADER - e->trailer - DG_ENTRY;
    Py_ssize_t parts = (len + room - 1) / room;
    if (parts > 0xFFFF) {  /* as transport.updates.cut refuses it */
        e->counts[C_INTERNAL_ERRORS]++;
        return;
    }
    e->counts[C_UPDATES_OUT]++;
    e->counts[C_NATIVE_OUT]++;
    for (Py_ssize_t part = 0; part < parts; part++) {
        Py_ssize_t from = at + part * room, n = hi - from < room ? hi - from : room;
        (n == room && !e->keyed ? pack_alone : pack_entry)(e, &s->link, s->key, (uint64_t)from, base, tag,
                                                         (uint16_t)part, (uint16_t)parts, full, shadow + from, n);
    }
}

/* ---------------------------------------------------------------- datagrams in */

/* Whether a received datagram is an UPDATE this path takes whole: every field valid as
   datagram.decode checks it (its CRC32C, or its MAC with a key), every entry a single-part update of a
   registered segment whose link sent it. Reads each field once; 0 leaves it to Python. */
static int fast_update(Engine *e, const unsigned char *d, Py_ssize_t n, const struct sockaddr_storage *from,
                       socklen_t from_len) {
    if (n < DG_HEADER + DG_CRC) return 0;
    if (get16(d) != DG_MAGIC || d[2] != DG_VERSION || d[3] != DG_KIND_UPDATE ||
        get16(d + 4) != (e->keyed ? DG_FLAG_MAC : 0))
        return 0;
    Py_ssize_t end = opened(e, d, n);
    if (!end) return 0;
    unsigned count = get16(d + 6);
    if (count < 1 || count > (unsigned)((end - DG_HEADER) / (DG_ENTRY + 1))) return 0;
    Py_ssize_t at = DG_HEADER;
    for (unsigned i = 0; i < count; i++) {
        if (at + DG_ENTRY > end) return 0;
        const unsigned char *p = d + at;
        uint64_t key = get64(p), offset = get64(p + 8);
        uint32_t base = get32(p + 16), tag = get32(p + 20);
        unsigned length = get16(p + 24), part = get16(p + 26), parts = get16(p + 28), flags = get16(p + 30);
        at += DG_ENTRY;
        int full = flags == DG_ENTRY_FULL;
        if ((flags & ~DG_ENTRY_FULL) || !length || !(part < parts) || !tag || (base == 0) != full) return 0;
        if (offset > UINT64_MAX - length || at + (Py_ssize_t)length > end) return 0;
        at += length;
        Seg *s = by_key(e, key);
        if (!s || !same_peer(&s->link, from, from_len)) return 0;
    }
    return at == end;
}

/* Write a whole update into its replica (Replica.unit_of and Replica.apply, one link): ranges at[0:n]
   (in part order, going forward: the caller checked), whose bytes are at data + (offset - data_lo).
   0, or -1 with an exception (from the binding's write). */
static int apply_update(Engine *e, Seg *s, uint32_t base, uint32_t tag, int full, const PartAt *at, unsigned n,
                        const unsigned char *data, uint64_t data_lo, PyObject *resyncs) {
    uint64_t first = at[0].offset;
    if (first >= (uint64_t)s->size) {
        e->counts[C_DROPPED_INCONSISTENT]++;
        return 0;
    }
    Py_ssize_t u = (Py_ssize_t)first / s->unit, lo = u * s->unit;
    Py_ssize_t hi = lo + s->unit < s->size ? lo + s->unit : s->size;
    if (at[n - 1].offset + at[n - 1].len != (uint64_t)hi) {  /* an update ends at its unit's last byte */
        e->counts[C_DROPPED_INCONSISTENT]++;
        return 0;
    }
    uint32_t *tags = s->tags.buf;
    unsigned char *in_sync = s->in_sync.buf, *shadow = s->shadow.buf, *own = s->own.buf;
    if (tag == tags[u] && in_sync[u]) {
        e->counts[C_DROPPED_DUPLICATE]++;
        return 0;
    }
    if (!full && base != tags[u]) {
        in_sync[u] = 0;
        e->counts[C_DROPPED_STALE]++;
        PyObject *item = Py_BuildValue("(Kn)", (unsigned long long)s->key, u);
        if (!item) return -1;
        int rc = PyList_Append(resyncs, item);
        Py_DECREF(item);
        return rc;
    }
    /* made in the shadow: the ranges go forward inside [lo, hi) (their first from lo on, their last
       ending at hi, each after the one before); a full update's bytes outside them are zero */
    Py_ssize_t next = lo;
    for (unsigned i = 0; i < n; i++) {
        Py_ssize_t off = (Py_ssize_t)at[i].offset;
        if (full && off > next) memset(shadow + next, 0, (size_t)(off - next));
        memcpy(shadow + off, data + (at[i].offset - data_lo), at[i].len);
        next = off + (Py_ssize_t)at[i].len;
    }
    Py_ssize_t start = full ? lo : (Py_ssize_t)first;
    PyObject *view = PyMemoryView_FromMemory((char *)shadow + start, hi - start, PyBUF_READ);
    if (!view) return -1;
    PyObject *where = PyLong_FromSsize_t(start);
    if (!where) { Py_DECREF(view); return -1; }
    PyObject *args[2] = {where, view};
    PyObject *r = PyObject_Vectorcall(s->write, args, 2, NULL);  /* its last byte raises the signals here */
    Py_DECREF(where);
    Py_DECREF(view);
    if (!r) return -1;
    Py_DECREF(r);
    if (own[u] < 255) own[u]++;
    in_sync[u] = 1;
    tags[u] = tag;
    e->counts[C_UPDATES_IN]++;
    e->counts[C_NATIVE_IN]++;
    return 0;
}

/* ---------------------------------------------------------------- updates in several datagrams */

static Partial *partial_find(Engine *e, uint64_t sender, uint64_t key, uint32_t tag) {
    for (Py_ssize_t i = 0; i < e->npartials; i++) {
        Partial *q = &e->partials[i];
        if (q->sender == sender && q->key == key && q->tag == tag) return q;
    }
    return NULL;
}

/* A unit buffer of cap bytes: a spare one if one is as large, else a new one (NULL: none). */
static unsigned char *buffer_take(Engine *e, Py_ssize_t cap) {
    for (int i = 0; i < SPARE_BUFFERS; i++)
        if (e->spare[i] && e->spare_cap[i] == cap) {
            unsigned char *b = e->spare[i];
            e->spare[i] = NULL;
            return b;
        }
    return PyMem_Malloc((size_t)cap);
}

static void buffer_give(Engine *e, unsigned char *b, Py_ssize_t cap) {
    for (int i = 0; i < SPARE_BUFFERS; i++)
        if (!e->spare[i]) {
            e->spare[i] = b;
            e->spare_cap[i] = cap;
            return;
        }
    PyMem_Free(b);
}

/* Nothing more kept of q but which parts came (see Partial). */
static void partial_doom(Engine *e, Partial *q) {
    if (q->buf) {
        buffer_give(e, q->buf, q->cap);
        e->partial_memory -= q->cap + (Py_ssize_t)(q->parts * sizeof *q->at);
    }
    PyMem_Free(q->at);
    q->buf = NULL;
    q->at = NULL;
    q->doomed = 1;
}

static void partial_drop(Engine *e, Partial *q) {
    partial_doom(e, q);
    PyMem_Free(q->have);
    e->partial_bytes -= q->bytes;
    *q = e->partials[--e->npartials];
}

static void partials_forget(Engine *e, uint64_t key) {
    for (Py_ssize_t i = e->npartials - 1; i >= 0; i--)
        if (e->partials[i].key == key) partial_drop(e, &e->partials[i]);
}

static void partials_free(Engine *e) {
    while (e->npartials) partial_drop(e, &e->partials[e->npartials - 1]);
    for (int i = 0; i < SPARE_BUFFERS; i++) {
        PyMem_Free(e->spare[i]);
        e->spare[i] = NULL;
    }
}

/* Drop the partial updates older than the timeout (Assembler.expire). */
static void partials_expire(Engine *e, uint64_t now) {
    for (Py_ssize_t i = e->npartials - 1; i >= 0; i--)
        if (now > e->partials[i].first_ns && now - e->partials[i].first_ns > e->partial_timeout_ns) {
            partial_drop(e, &e->partials[i]);
            e->counts[C_DROPPED_INCOMPLETE]++;
        }
}

/* A new partial update (Assembler._make_room, then _Pending): the oldest go while the bounds are
   reached; its buffer if it can apply (else doomed). NULL if there is no memory for its part map. */
static Partial *partial_new(Engine *e, Seg *s, uint64_t sender, uint64_t key, uint32_t tag, uint32_t base,
                            unsigned parts, int full, uint64_t offset, unsigned len, uint64_t now) {
    while (e->npartials &&
           (e->npartials >= e->max_partials || e->partial_bytes + (Py_ssize_t)len > e->max_partial_bytes)) {
        Partial *oldest = &e->partials[0];
        for (Py_ssize_t i = 1; i < e->npartials; i++)
            if (e->partials[i].order < oldest->order) oldest = &e->partials[i];
        partial_drop(e, oldest);
        e->counts[C_DROPPED_INCOMPLETE]++;
    }
    unsigned char *have = PyMem_Calloc((parts + 7) / 8, 1);
    if (!have) return NULL;
    Partial *q = &e->partials[e->npartials++];
    *q = (Partial){.sender = sender, .key = key, .tag = tag, .base = base, .parts = parts, .full = full,
                   .first_ns = now, .order = ++e->partial_order, .have = have, .doomed = 1};
    if (offset >= (uint64_t)s->size) return q;  /* no unit: it cannot apply */
    Py_ssize_t lo = (Py_ssize_t)offset / s->unit * s->unit, hi = lo + s->unit < s->size ? lo + s->unit : s->size;
    Py_ssize_t memory = (hi - lo) + (Py_ssize_t)(parts * sizeof *q->at);
    if ((Py_ssize_t)parts > hi - lo || e->partial_memory + memory > PARTIAL_MEMORY)
        return q;  /* (a part is a byte at least) */
    q->at = PyMem_Malloc(parts * sizeof *q->at);
    q->buf = q->at ? buffer_take(e, hi - lo) : NULL;
    if (!q->buf) {
        PyMem_Free(q->at);
        q->at = NULL;
        return q;
    }
    q->lo = (uint64_t)lo;
    q->cap = hi - lo;
    q->doomed = 0;
    e->partial_memory += memory;
    return q;
}

/* Part `part` of q, its fields checked, its `len` bytes at `data` (NULL: already in their place, see
   fast_part): kept, and the update written once its every part came (Replica.apply). 0, or -1 with
   an exception. */
static int assemble_part(Engine *e, Seg *s, Partial *q, unsigned part, uint64_t offset, unsigned len,
                         const unsigned char *data, PyObject *resyncs) {
    if (q->got && e->partial_bytes + (Py_ssize_t)len > e->max_partial_bytes) {  /* the bound: this update goes */
        partial_drop(e, q);
        e->counts[C_DROPPED_INCOMPLETE]++;
        return 0;
    }
    q->have[part >> 3] |= (unsigned char)(1 << (part & 7));
    q->lowest = q->got && q->lowest < part ? q->lowest : part;
    q->highest = q->got && q->highest > part ? q->highest : part;
    q->got++;
    q->bytes += len;
    e->partial_bytes += len;
    if (!q->doomed) {
        if (offset < q->lo || offset - q->lo > (uint64_t)q->cap || len > (uint64_t)q->cap - (offset - q->lo)) {
            partial_doom(e, q);  /* outside the unit of the others: it cannot apply */
        } else {
            if (data) memcpy(q->buf + (offset - q->lo), data, len);
            q->at[part] = (PartAt){offset, len};
        }
    }
    if (q->got < q->parts) return 0;
    int ok = !q->doomed;
    for (unsigned i = 0; ok && i + 1 < q->parts; i++)  /* the ranges go forward, none over the next */
        ok = q->at[i].offset + q->at[i].len <= q->at[i + 1].offset;
    int rc = 0;
    if (!ok) e->counts[C_DROPPED_INCONSISTENT]++;
    else rc = apply_update(e, s, q->base, q->tag, q->full, q->at, q->parts, q->buf, q->lo, resyncs);
    partial_drop(e, q);
    return rc;
}

/* One entry of a multi-datagram update (Assembler.add; fast_update checked its fields). */
static int assemble(Engine *e, Seg *s, uint64_t sender, const unsigned char *p, PyObject *resyncs, uint64_t now) {
    uint64_t key = get64(p), offset = get64(p + 8);
    uint32_t base = get32(p + 16), tag = get32(p + 20);
    unsigned len = get16(p + 24), part = get16(p + 26), parts = get16(p + 28);
    int full = get16(p + 30) == DG_ENTRY_FULL;
    Partial *q = partial_find(e, sender, key, tag);
    if (!q) {
        q = partial_new(e, s, sender, key, tag, base, parts, full, offset, len, now);
        if (!q) {
            e->counts[C_INTERNAL_ERRORS]++;  /* no memory: as lost */
            return 0;
        }
    } else if (q->base != base || q->full != full || q->parts != parts) {
        partial_drop(e, q);
        e->counts[C_DROPPED_INCONSISTENT]++;
        return 0;
    }
    if (q->have[part >> 3] & (1 << (part & 7))) return 0;  /* a duplicate part: ignored */
    return assemble_part(e, s, q, part, offset, len, p + DG_ENTRY, resyncs);
}

#define BETWEEN_SCAN 8            /* parts looked at on either side of one (fast_part), at most */

/* Whether [offset, offset + len) lies after the range of the nearest part below `part` that came and
   before that of the nearest above; 0 too if either is more than BETWEEN_SCAN parts away. */
static int between(const Partial *q, unsigned part, uint64_t offset, unsigned len) {
    if (part > q->lowest) {
        for (unsigned i = part, k = 0;;) {
            if (++k > BETWEEN_SCAN) return 0;
            i--;
            if (q->have[i >> 3] & (1 << (i & 7))) {
                if (q->at[i].offset + q->at[i].len > offset) return 0;
                break;
            }
        }
    }
    if (part < q->highest) {
        for (unsigned i = part, k = 0;;) {
            if (++k > BETWEEN_SCAN) return 0;
            i++;
            if (q->have[i >> 3] & (1 << (i & 7))) {
                if (offset + len > q->at[i].offset) return 0;
                break;
            }
        }
    }
    return 1;
}

/* The bulk of a large update without a key: a later part of an update being gathered, alone in its
   datagram, is checked (its CRC32C) while it is copied into its place in the update's buffer (one
   pass over its bytes, not two). Its fields are read first, unchecked, only to find that place: a
   part of that update not yet come, between the parts that came on either side of it. If the CRC
   then fails, what was copied lies where no part that came lies, and any part that comes there
   later overwrites it (or, if the parts that came already disagree, the update cannot apply: it
   is never read). Whether it was taken (else fast_update, or Python, looks at it as at any other). */
static int fast_part(Engine *e, const unsigned char *d, Py_ssize_t n, const struct sockaddr_storage *from,
                     socklen_t from_len, PyObject *resyncs, uint64_t now) {
    if (e->keyed || !e->npartials || n < DG_HEADER + DG_ENTRY + 1 + DG_CRC) return 0;
    if (get16(d) != DG_MAGIC || d[2] != DG_VERSION || d[3] != DG_KIND_UPDATE || get16(d + 4) != 0 || get16(d + 6) != 1)
        return 0;
    const unsigned char *p = d + DG_HEADER;
    uint64_t sender = get64(d + 8), seq = get64(d + 16), key = get64(p), offset = get64(p + 8);
    uint32_t base = get32(p + 16), tag = get32(p + 20);
    unsigned len = get16(p + 24), part = get16(p + 26), parts = get16(p + 28), flags = get16(p + 30);
    int full = flags == DG_ENTRY_FULL;
    if ((Py_ssize_t)len != n - DG_HEADER - DG_ENTRY - DG_CRC || !(part < parts) || parts < 2 || !tag ||
        (flags & ~DG_ENTRY_FULL) || (base == 0) != full)
        return 0;
    Partial *q = partial_find(e, sender, key, tag);
    if (!q || q->doomed || !q->got || q->base != base || q->full != full || q->parts != parts ||
        (q->have[part >> 3] & (1 << (part & 7))))
        return 0;
    if (offset < q->lo || offset - q->lo > (uint64_t)q->cap || len > (uint64_t)q->cap - (offset - q->lo) ||
        !between(q, part, offset, len))
        return 0;
    Seg *s = by_key(e, key);
    if (!s || !same_peer(&s->link, from, from_len)) return 0;
    uint32_t crc = crc32c_copy(NULL, d, DG_HEADER + DG_ENTRY, 0);
    crc = crc32c_copy(q->buf + (offset - q->lo), p + DG_ENTRY, len, crc);
    if (crc != get32(d + n - DG_CRC)) return 0;
    e->counts[C_DATAGRAMS_IN]++;  /* from here: as fast_update and take_update */
    e->counts[C_BYTES_IN] += (unsigned long long)n;
    if (window_check(e, sender, seq, window_find(e, sender) ? 0 : now_us_realtime())) {
        e->counts[C_DROPPED_REPLAY]++;
        return 1;
    }
    window_commit(e, sender, seq);
    s->heard_ns = now;
    if (assemble_part(e, s, q, part, offset, len, NULL, resyncs) < 0) {
        PyErr_WriteUnraisable((PyObject *)e);
        e->counts[C_INTERNAL_ERRORS]++;
    }
    return 1;
}

/* A datagram fast_update took: replay window, then every entry. */
static void take_update(Engine *e, const unsigned char *d, PyObject *resyncs, uint64_t now) {
    uint64_t sender = get64(d + 8), seq = get64(d + 16);
    if (window_check(e, sender, seq, window_find(e, sender) ? 0 : now_us_realtime())) {  /* the clock: a new sender's */
        e->counts[C_DROPPED_REPLAY]++;
        return;
    }
    window_commit(e, sender, seq);
    unsigned count = get16(d + 6);
    const unsigned char *p = d + DG_HEADER;
    for (unsigned i = 0; i < count; i++) {
        Seg *s = by_key(e, get64(p));
        if (!s) break;  /* fast_update found it: only a bug could have removed it since */
        s->heard_ns = now;
        int rc;
        if (get16(p + 28) == 1) {  /* a whole update in this entry */
            PartAt one = {get64(p + 8), get16(p + 24)};
            uint16_t flags = get16(p + 30);
            rc = apply_update(e, s, get32(p + 16), get32(p + 20), flags == DG_ENTRY_FULL, &one, 1, p + DG_ENTRY,
                              one.offset, resyncs);
        } else {
            rc = assemble(e, s, sender, p, resyncs, now);
        }
        if (rc < 0) {  /* a bug must not end the bridge (Bridge.receive_datagram) */
            PyErr_WriteUnraisable((PyObject *)e);
            e->counts[C_INTERNAL_ERRORS]++;
        }
        p += DG_ENTRY + get16(p + 24);
    }
}

/* One datagram received: taken here (fast_update), or left to Python with the rest of its pass
   (*deferring: one sender's datagrams stay in order). 0, or -1 with an exception. */
static int take_datagram(Engine *e, const unsigned char *d, Py_ssize_t n, const struct sockaddr_storage *from,
                         socklen_t from_len, int *deferring, PyObject *datagrams, PyObject *resyncs, uint64_t now) {
    if (!*deferring && fast_part(e, d, n, from, from_len, resyncs, now)) return 0;
    if (!*deferring && fast_update(e, d, n, from, from_len)) {
        e->counts[C_DATAGRAMS_IN]++;
        e->counts[C_BYTES_IN] += (unsigned long long)n;
        take_update(e, d, resyncs, now);
        return 0;
    }
    *deferring = 1;  /* Python counts it */
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getnameinfo((const struct sockaddr *)from, from_len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV))
        return 0;  /* no address Python could name: as its recvfrom would fail */
    PyObject *item = Py_BuildValue("(y#(si))", (const char *)d, n, host, atoi(port));
    if (!item || PyList_Append(datagrams, item) < 0) { Py_XDECREF(item); return -1; }
    Py_DECREF(item);
    return 0;
}

/* ---------------------------------------------------------------- one pass */

/* Signals, then datagrams, then what they made to send: whether anything came; -1 with an exception. */
static int pass(Engine *e, PyObject *signals, PyObject *datagrams, PyObject *resyncs) {
    FifoMap *m = (FifoMap *)e->fifo;
    int busy = 0;
    uint64_t t0 = now_ns();
    uint64_t seg_id = 0, off = 0;
    uint64_t drops = atomic_load_explicit(A64(m->base + FIFO_DROPS), memory_order_relaxed);
    if (drops != e->fifo_drops) {  /* echoes may have been lost: their counts would swallow local writes */
        e->fifo_drops = drops;
        for (Py_ssize_t i = 0; i < e->nsegs; i++) memset(e->segs[i]->own.buf, 0, (size_t)e->segs[i]->own.len);
        e->flags |= RUN_DROPS;
    }
    for (int i = 0; i < POP_BATCH && fifo_take(m, &seg_id, &off); i++) {
        busy = 1;
        Seg *s = by_seg_id(e, seg_id);
        if (!s) {  /* not ours to take: Python's receiver dispatches it */
            PyObject *item = Py_BuildValue("(KK)", (unsigned long long)seg_id, (unsigned long long)off);
            if (!item || PyList_Append(signals, item) < 0) { Py_XDECREF(item); return -1; }
            Py_DECREF(item);
            continue;
        }
        if (off >= (uint64_t)s->size) continue;  /* a local peer's scribble: no unit of ours */
        Py_ssize_t u = (Py_ssize_t)off / s->unit;
        unsigned char *own = s->own.buf;
        if (own[u]) {
            own[u]--;
            e->counts[C_ECHOES]++;
        } else if (!(s->dirty[u >> 3] & (1 << (u & 7)))) {
            s->dirty[u >> 3] |= (unsigned char)(1 << (u & 7));
            s->dirty_list[s->ndirty++] = u;
        }
    }
    uint64_t out_ns = now_ns() - t0;
    /* datagrams: as many as Python's turn takes (MAX_TURN) */
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iov[RECV_BATCH];
    struct sockaddr_storage from[RECV_BATCH];
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control[RECV_BATCH];
    int deferring = PyList_GET_SIZE(datagrams) > 0;
    for (int batch = 0; batch < RECV_BATCHES; batch++) {
        for (int i = 0; i < RECV_BATCH; i++) {
            iov[i].iov_base = e->recv_buf + (size_t)i * RECV_SIZE;
            iov[i].iov_len = RECV_SIZE;
            msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                              .msg_iov = &iov[i], .msg_iovlen = 1,
                                              .msg_control = control[i].buf, .msg_controllen = sizeof control[i].buf};
            msgs[i].msg_len = 0;
        }
        int got = recvmmsg(e->fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0) break;  /* none (or an ICMP error reported on the socket: Python's recvfrom skips it too) */
        busy = 1;
        uint64_t t1 = now_ns();  /* one clock for the batch (the replay window's, only for a new sender) */
        for (int i = 0; i < got; i++) {
            const unsigned char *d = iov[i].iov_base;
            Py_ssize_t n = msgs[i].msg_len, size = n;
            struct msghdr *mh = &msgs[i].msg_hdr;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm))
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
                    int gro;
                    memcpy(&gro, CMSG_DATA(cm), sizeof gro);
                    if (gro > 0 && gro < size) size = gro;  /* datagrams this long joined (the last: shorter) */
                }
            Py_ssize_t at = 0;
            do {  /* an empty datagram too (Python counts it, and drops it) */
                Py_ssize_t len = n - at < size ? n - at : size;
                if (take_datagram(e, d + at, len, &from[i], mh->msg_namelen, &deferring, datagrams, resyncs, t1) < 0)
                    return -1;
                at += len;
            } while (at < n);
        }
        e->counts[C_BUSY_IN_NS] += now_ns() - t1;  /* from the receive to the local writes (and what Python gets) */
        if (got < RECV_BATCH) break;
    }
    t0 = now_ns();
    if (e->npartials) partials_expire(e, t0);
    for (Py_ssize_t i = 0; i < e->nsegs; i++) {
        Seg *s = e->segs[i];
        for (Py_ssize_t k = 0; k < s->ndirty; k++) {
            Py_ssize_t u = s->dirty_list[k];
            s->dirty[u >> 3] &= (unsigned char)~(1 << (u & 7));
            send_unit(e, s, u);
        }
        s->ndirty = 0;
    }
    send_all(e);
    if (busy) e->counts[C_BUSY_OUT_NS] += out_ns + now_ns() - t0;
    return busy;
}

/* ---------------------------------------------------------------- waiting */

static int readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* Spin (GIL released) until the FIFO has an entry or the socket a datagram, for at most spin_ns:
   bridge_spin's loop. Whether something came. */
static int spin(Engine *e, uint64_t spin_ns) {
    if (!spin_ns) return 0;
    FifoMap *m = (FifoMap *)e->fifo;
    int fd = e->fd, came = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t start = now_ns(), end = start + spin_ns, quiet = start + QUIET_NS;
    unsigned polls = 0;
    fifo_publish_state(m, RECEIVER_SPINNING, sched_getcpu());  /* for the local ends that follow it */
    for (;;) {
        if (fifo_ready(m) || ((polls++ & 7) == 0 && readable(fd))) { came = 1; break; }
        uint64_t t = now_ns();
        if (t >= end) break;
        if (t >= quiet) {
            sched_yield();
            if (readable(fd)) { came = 1; break; }
        }
    }
    fifo_publish_state(m, RECEIVER_RUNNING, sched_getcpu());
    Py_END_ALLOW_THREADS
    return came;
}

int machine_overloaded(uint64_t now);  /* sync.c: more runnable tasks than online CPUs (a hint) */

/* The spin's budget now (SpinPolicy): the learnt budget, at least the process's cap (the cap only
   while the machine is overloaded); the floor
   after SPIN_MISSES misses in a row (but the learnt budget every SPIN_PROBE-th); the cap alone
   when not adaptive (OMBM_WAIT=spin); none when the cap is 0 (OMBM_WAIT=sleep). */
static uint64_t spin_budget(const SpinPolicy *p, uint64_t cap, int adaptive, int overloaded) {
    if (!cap || !adaptive) return cap;
    uint64_t budget = p->learnt_ns > cap && !overloaded ? p->learnt_ns : cap;
    if (budget > PATH_SPIN_MAX_NS) budget = cap > PATH_SPIN_MAX_NS ? cap : PATH_SPIN_MAX_NS;
    if (p->misses >= SPIN_MISSES && p->misses % SPIN_PROBE != 0) return cap < SPIN_FLOOR_NS ? cap : SPIN_FLOOR_NS;
    return budget;
}

/* Learn from an idle gap of gap_ns (from the first pass that found nothing to the next pass that
   found something; it includes the wake-up if the spin lost). */
static void spin_learn(SpinPolicy *p, uint64_t gap_ns) {
    if (gap_ns > PATH_SPIN_MAX_NS) return;  /* a quiet link, not a call's gap */
    p->gaps[p->at] = gap_ns;
    p->at = (p->at + 1) % GAP_WINDOW;
    uint64_t longest = 0;
    for (unsigned i = 0; i < GAP_WINDOW; i++)
        if (p->gaps[i] > longest) longest = p->gaps[i];
    p->learnt_ns = longest + longest / 4;
}

/* poll() the socket, the doorbell and Python's descriptors (pfd[2:]), GIL released: as Bridge._sleep
   (announce sleep in the FIFO's sleep word, re-check, wait, awake, drain the doorbell). Returns 1 if
   a Python descriptor is readable, 0 otherwise. */
static int sleep_poll(Engine *e, struct pollfd *pfd, nfds_t n, int timeout_ms) {
    FifoMap *m = (FifoMap *)e->fifo;
    au32 *sleep_word = A32(m->base + FIFO_SLEEP);
    atomic_store_explicit(sleep_word, 2, memory_order_seq_cst);  /* SLEEP_DOORBELL */
    if (fifo_ready(m)) {
        atomic_store_explicit(sleep_word, 0, memory_order_seq_cst);
        return 0;
    }
    if (fifo_unsettled(m) && timeout_ms > UNSETTLED_POLL_MS) timeout_ms = UNSETTLED_POLL_MS;
    for (nfds_t i = 0; i < n; i++) pfd[i].revents = 0;
    int r;
    Py_BEGIN_ALLOW_THREADS
    fifo_publish_state(m, RECEIVER_ASLEEP, sched_getcpu());
    r = poll(pfd, n, timeout_ms);
    fifo_publish_state(m, RECEIVER_RUNNING, sched_getcpu());
    Py_END_ALLOW_THREADS
    atomic_store_explicit(sleep_word, 0, memory_order_seq_cst);  /* SLEEP_AWAKE */
    if (pfd[1].fd >= 0) {
        char junk[64];
        while (recv(pfd[1].fd, junk, sizeof junk, MSG_DONTWAIT) > 0) {}
    }
    if (!fifo_ready(m) && fifo_unsettled(m)) e->flags |= RUN_STALLED;
    if (r <= 0) return 0;
    for (nfds_t i = 2; i < n; i++)
        if (pfd[i].revents) return 1;
    return 0;
}

/* ---------------------------------------------------------------- the type */

static int Engine_init(Engine *e, PyObject *args, PyObject *Py_UNUSED(kw)) {
    PyObject *fifo;
    int fd;
    unsigned long long sender, tag;
    long long max_age;
    Py_ssize_t mtu;
    PyObject *key;
    if (!PyArg_ParseTuple(args, "O!iKKLnO", &FifoMapType, &fifo, &fd, &sender, &tag, &max_age, &mtu, &key)) return -1;
    e->keyed = key != Py_None;
    e->trailer = e->keyed ? DG_MAC : DG_CRC;
    if (e->keyed) {
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) < 16 ||
            mac_init(&e->mac, (const unsigned char *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key)) < 0) {
            PyErr_SetString(PyExc_ValueError, "BridgeEngine: a key is 16 to 64 bytes");
            return -1;
        }
    }
    if (fd < 0 || mtu < MIN_MTU || mtu > DG_MAX_MTU) {
        PyErr_SetString(PyExc_ValueError, "BridgeEngine: bad descriptor or MTU");
        return -1;
    }
    if (e->fifo) {
        PyErr_SetString(PyExc_RuntimeError, "BridgeEngine: already initialised");
        return -1;
    }
    Py_INCREF(fifo);
    e->fifo = fifo;
    e->fd = fd;
    e->sender = sender;
    e->tag = (uint32_t)tag;
    e->max_age_us = max_age;
    e->mtu = mtu;
    e->segments = 1;
    e->out_len = DG_HEADER;
    e->fifo_drops = atomic_load_explicit(A64(((FifoMap *)fifo)->base + FIFO_DROPS), memory_order_relaxed);
    e->window = PyMem_Calloc(MAX_SENDERS, sizeof *e->window);
    e->recv_buf = PyMem_Malloc((size_t)RECV_BATCH * RECV_SIZE);
    e->max_partials = 256;             /* Assembler's defaults, until set_assembly */
    e->max_partial_bytes = 8 << 20;
    e->partial_timeout_ns = 500000000ull;
    e->partials = PyMem_Calloc((size_t)e->max_partials, sizeof *e->partials);
    if (!e->window || !e->recv_buf || !e->partials) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int Engine_traverse(Engine *e, visitproc visit, void *arg) {
    Py_VISIT(e->fifo);
    for (Py_ssize_t i = 0; i < e->nsegs; i++) {
        Py_VISIT(e->segs[i]->write);
        Py_VISIT(e->segs[i]->shadow.obj);
        Py_VISIT(e->segs[i]->tags.obj);
        Py_VISIT(e->segs[i]->own.obj);
        Py_VISIT(e->segs[i]->in_sync.obj);
    }
    return 0;
}

static int Engine_clear(Engine *e) {
    for (Py_ssize_t i = 0; i < e->nsegs; i++) seg_free(e->segs[i]);
    e->nsegs = 0;
    PyMem_Free(e->segs);
    e->segs = NULL;
    e->cap = 0;
    PyMem_Free(e->window);
    e->window = NULL;
    e->nwindow = 0;
    PyMem_Free(e->recv_buf);
    e->recv_buf = NULL;
    partials_free(e);
    PyMem_Free(e->partials);
    e->partials = NULL;
    Py_CLEAR(e->fifo);
    return 0;
}

static int ready(Engine *e) {
    if (!e->fifo || !e->window || !e->recv_buf || !e->partials) {
        PyErr_SetString(PyExc_ValueError, "BridgeEngine: not initialised, or closed");
        return 0;
    }
    return 1;
}

static void seg_remove(Engine *e, uint64_t key) {
    for (Py_ssize_t i = 0; i < e->nsegs; i++)
        if (e->segs[i]->key == key) {
            seg_free(e->segs[i]);
            e->segs[i] = e->segs[--e->nsegs];
            break;
        }
}

static PyObject *Engine_remove(Engine *e, PyObject *arg) {
    unsigned long long key = PyLong_AsUnsignedLongLong(arg);
    if (key == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    seg_remove(e, key);
    if (e->partials) partials_forget(e, key);  /* as Assembler.forget: not counted */
    Py_RETURN_NONE;
}

/* set_assembly(max_updates, max_bytes, timeout_s): the bounds of partial updates (Assembler's). */
static PyObject *Engine_set_assembly(Engine *e, PyObject *args) {
    Py_ssize_t max_updates, max_bytes;
    double timeout_s;
    if (!ready(e) || !PyArg_ParseTuple(args, "nnd", &max_updates, &max_bytes, &timeout_s)) return NULL;
    if (max_updates < 1 || max_updates > 65536 || max_bytes < 1 || !(timeout_s >= 0 && timeout_s <= 86400)) {
        PyErr_SetString(PyExc_ValueError, "BridgeEngine.set_assembly: out of range");
        return NULL;
    }
    Partial *partials = PyMem_Calloc((size_t)max_updates, sizeof *partials);
    if (!partials) return PyErr_NoMemory();
    partials_free(e);
    PyMem_Free(e->partials);
    e->partials = partials;
    e->max_partials = max_updates;
    e->max_partial_bytes = max_bytes;
    e->partial_timeout_ns = (uint64_t)(timeout_s * 1e9);
    Py_RETURN_NONE;
}

/* add(key, segment_id, base, size, unit, shadow, tags, own, write, address, in_sync): register (or
   register anew) a segment replicated with the one bridge at address. */
static PyObject *Engine_add(Engine *e, PyObject *args) {
    unsigned long long key, seg_id, base;
    Py_ssize_t size, unit;
    PyObject *shadow, *tags, *own, *write, *address, *in_sync;
    if (!ready(e)) return NULL;
    if (!PyArg_ParseTuple(args, "KKKnnOOOOOO", &key, &seg_id, &base, &size, &unit, &shadow, &tags, &own, &write,
                          &address, &in_sync))
        return NULL;
    if (!base || size <= 0 || unit <= 0 || !PyCallable_Check(write)) {
        PyErr_SetString(PyExc_ValueError, "BridgeEngine.add: bad geometry or write");
        return NULL;
    }
    Seg *s = PyMem_Calloc(1, sizeof *s);
    if (!s) return PyErr_NoMemory();
    s->key = key;
    s->seg_id = seg_id;
    s->base = (unsigned char *)(uintptr_t)base;
    s->size = size;
    s->unit = unit;
    s->units = (size + unit - 1) / unit;
    if (parse_peer(address, &s->link) < 0 || PyObject_GetBuffer(shadow, &s->shadow, PyBUF_WRITABLE) < 0)
        goto fail;
    if (PyObject_GetBuffer(tags, &s->tags, PyBUF_WRITABLE) < 0) goto fail;
    if (PyObject_GetBuffer(own, &s->own, PyBUF_WRITABLE) < 0) goto fail;
    if (PyObject_GetBuffer(in_sync, &s->in_sync, PyBUF_WRITABLE) < 0) goto fail;
    if (s->shadow.len != size || s->tags.len != 4 * s->units || s->own.len != s->units || s->in_sync.len != s->units) {
        PyErr_SetString(PyExc_ValueError, "BridgeEngine.add: buffers of the wrong size");
        goto fail;
    }
    s->dirty = PyMem_Calloc((size_t)(s->units + 7) / 8, 1);
    s->dirty_list = PyMem_Calloc((size_t)s->units, sizeof *s->dirty_list);
    if (!s->dirty || !s->dirty_list) { PyErr_NoMemory(); goto fail; }
    Py_INCREF(write);
    s->write = write;
    seg_remove(e, key);
    if (e->nsegs == e->cap) {
        Py_ssize_t cap = e->cap ? 2 * e->cap : 16;
        Seg **segs = PyMem_Realloc(e->segs, (size_t)cap * sizeof *segs);
        if (!segs) { PyErr_NoMemory(); goto fail; }
        e->segs = segs;
        e->cap = cap;
    }
    e->segs[e->nsegs++] = s;
    Py_RETURN_NONE;
fail:
    seg_free(s);
    return NULL;
}

static PyObject *Engine_set_mtu(Engine *e, PyObject *arg) {
    Py_ssize_t mtu = PyLong_AsSsize_t(arg);
    if (mtu == -1 && PyErr_Occurred()) return NULL;
    if (mtu < MIN_MTU || mtu > DG_MAX_MTU) {
        PyErr_SetString(PyExc_ValueError, "BridgeEngine.set_mtu: out of range");
        return NULL;
    }
    e->mtu = mtu;
    e->segments = 1;  /* a new size: the kernel may cut sends to it (send_sealed) */
    Py_RETURN_NONE;
}

static PyObject *Engine_next_seq(Engine *e, PyObject *arg) {
    unsigned long long now = PyLong_AsUnsignedLongLong(arg);
    if (now == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    e->seq = e->seq + 1 > now ? e->seq + 1 : now;
    return PyLong_FromUnsignedLongLong(e->seq);
}

static PyObject *Engine_next_tag(Engine *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLong(next_tag(e));
}

static int parse_u64s(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, unsigned long long *out) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments", want);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        out[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (out[i] == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

static PyObject *Engine_check(Engine *e, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long v[3];
    if (!ready(e) || parse_u64s(args, nargs, 3, v) < 0) return NULL;
    static const char *const why[] = {"", "replay", "stale"};
    return PyUnicode_FromString(why[window_check(e, v[0], v[1], v[2])]);
}

static PyObject *Engine_commit(Engine *e, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long v[2];
    if (!ready(e) || parse_u64s(args, nargs, 2, v) < 0) return NULL;
    window_commit(e, v[0], v[1]);
    Py_RETURN_NONE;
}

static PyObject *Engine_forget(Engine *e, PyObject *arg) {
    unsigned long long sender = PyLong_AsUnsignedLongLong(arg);
    if (sender == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (!ready(e)) return NULL;
    window_forget(e, sender);
    Py_RETURN_NONE;
}

static PyObject *Engine_heard_ns(Engine *e, PyObject *address) {
    Peer p;
    if (parse_peer(address, &p) < 0) return NULL;
    uint64_t heard = 0;
    for (Py_ssize_t i = 0; i < e->nsegs; i++) {
        Seg *s = e->segs[i];
        if (same_peer(&p, &s->link.addr, s->link.len) && s->heard_ns > heard) heard = s->heard_ns;
    }
    return PyLong_FromUnsignedLongLong(heard);
}

static PyObject *Engine_counts(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < C_COUNTS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(e->counts[i]);
        if (!v || PyDict_SetItemString(d, count_names[i], v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    const char *names[] = {"spins", "spin_wins", "spin_learnt_ns"};  /* the spin's, not in count_names */
    unsigned long long values[] = {e->spin.spins, e->spin.wins, e->spin.learnt_ns};
    for (int i = 0; i < 3; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(values[i]);
        if (!v || PyDict_SetItemString(d, names[i], v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    return d;
}

/* run(spin_cap_ns, adaptive, timeout_s, doorbell_fd, fds): serve until Python is needed; returns
   (signals, datagrams, resyncs, flags): the signals of segments not registered [(segment id,
   offset)], the datagrams this path does not take [(bytes, (ip, port))], the units whose delta came
   on another content [(key, unit)] (a RESYNC to the sender), and RUN_* bits. It returns when any
   of those is not empty, a descriptor of fds is readable, timeout_s passed, or a POSIX signal came. */
/* A descriptor from Python (-1 allowed: poll ignores it): an int, else OverflowError (-1 with an error set). */
static int as_descriptor(PyObject *obj) {
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (value < -1 || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "run: a descriptor out of range");
        return -1;
    }
    return (int)value;
}

static PyObject *Engine_run(Engine *e, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyTuple_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "run(spin_cap_ns, adaptive, timeout_s, doorbell_fd, fds: tuple)");
        return NULL;
    }
    if (!ready(e)) return NULL;
    unsigned long long cap = PyLong_AsUnsignedLongLong(args[0]);
    if (cap == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    int adaptive = PyObject_IsTrue(args[1]);
    double timeout_s = PyFloat_AsDouble(args[2]);
    int doorbell = as_descriptor(args[3]);
    if (adaptive < 0 || (timeout_s == -1.0 && PyErr_Occurred()) || (doorbell == -1 && PyErr_Occurred()))
        return NULL;
    Py_ssize_t nfds = PyTuple_GET_SIZE(args[4]);
    if (nfds > 8) {
        PyErr_SetString(PyExc_ValueError, "run: at most 8 descriptors");
        return NULL;
    }
    struct pollfd pfd[10] = {{.fd = e->fd, .events = POLLIN}, {.fd = doorbell, .events = POLLIN}};
    for (Py_ssize_t i = 0; i < nfds; i++) {
        int fd = as_descriptor(PyTuple_GET_ITEM(args[4], i));
        if (fd == -1 && PyErr_Occurred()) return NULL;
        pfd[2 + i] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    if (timeout_s < 0) timeout_s = 0;
    if (timeout_s > 3600) timeout_s = 3600;
    uint64_t deadline = now_ns() + (uint64_t)(timeout_s * 1e9);
    PyObject *signals = PyList_New(0), *datagrams = PyList_New(0), *resyncs = PyList_New(0);
    if (!signals || !datagrams || !resyncs) goto fail;
    e->flags = 0;
    uint64_t idle_since = 0;  /* when the passes began to find nothing (0: they find something) */
    for (unsigned turn = 1;; turn++) {
        uint64_t pass_at = now_ns();
        int busy = pass(e, signals, datagrams, resyncs);
        if (busy < 0) goto fail;
        if (busy && idle_since) spin_learn(&e->spin, pass_at - idle_since);
        idle_since = busy ? 0 : idle_since ? idle_since : pass_at;
        if (PyList_GET_SIZE(signals) || PyList_GET_SIZE(datagrams) || PyList_GET_SIZE(resyncs) || e->flags) break;
        if (PyErr_CheckSignals() < 0) goto fail;
        uint64_t now = now_ns();
        if (now >= deadline) break;
        if (busy) {
            if (turn % PY_CHECK_EVERY == 0 && poll(pfd + 2, (nfds_t)nfds, 0) > 0) break;
            continue;
        }
        uint64_t budget = spin_budget(&e->spin, cap, adaptive, adaptive && machine_overloaded(now));
        e->spin.spins += budget != 0;
        if (spin(e, budget)) {
            e->spin.wins++;
            e->spin.misses = 0;
            continue;
        }
        e->spin.misses += budget != 0;
        now = now_ns();
        if (now >= deadline) break;
        uint64_t left_ms = (deadline - now + 999999) / 1000000;
        if (sleep_poll(e, pfd, (nfds_t)(2 + nfds), (int)(left_ms > INT_MAX ? INT_MAX : left_ms)) || e->flags) break;
    }
    return Py_BuildValue("(NNNi)", signals, datagrams, resyncs, e->flags);
fail:
    Py_XDECREF(signals);
    Py_XDECREF(datagrams);
    Py_XDECREF(resyncs);
    return NULL;
}

/* For the tests: whether this path takes datagram `data` from `address` (fast_update). */
static PyObject *Engine_takes(Engine *e, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "takes(data, address)");
        return NULL;
    }
    Peer p;
    if (parse_peer(args[1], &p) < 0) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    int r = fast_update(e, v.buf, v.len, &p.addr, p.len);
    PyBuffer_Release(&v);
    return PyBool_FromLong(r);
}

/* assemble(sender, entry, now_s): one entry of a multi-datagram update of a registered segment that
   came in a datagram Python took (run() leaves the rest of a batch to Python once it leaves it one),
   into this path's assembler: one assembler per segment, whichever path its parts came by (now_s:
   the monotonic clock, Python's time.monotonic()). The units to ask a RESYNC for: [unit]. The entry
   as datagram.pack_entry makes it; ValueError if it is not one of a registered segment. */
static PyObject *Engine_assemble(Engine *e, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "assemble(sender, entry, now_s)");
        return NULL;
    }
    if (!ready(e)) return NULL;
    unsigned long long sender = PyLong_AsUnsignedLongLong(args[0]);
    if (sender == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    double now_s = PyFloat_AsDouble(args[2]);
    if (now_s == -1.0 && PyErr_Occurred()) return NULL;
    uint64_t now = now_s > 0 ? (uint64_t)(now_s * 1e9) : 0;
    Py_buffer v;
    if (PyObject_GetBuffer(args[1], &v, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = v.buf;
    Seg *s = v.len >= DG_ENTRY ? by_key(e, get64(p)) : NULL;
    unsigned length = v.len >= DG_ENTRY ? get16(p + 24) : 0;
    unsigned part = v.len >= DG_ENTRY ? get16(p + 26) : 0, parts = v.len >= DG_ENTRY ? get16(p + 28) : 0;
    unsigned flags = v.len >= DG_ENTRY ? get16(p + 30) : 0;
    if (!s || v.len != DG_ENTRY + (Py_ssize_t)length || !length || !(part < parts) || parts < 2 || !get32(p + 20) ||
        (flags & ~DG_ENTRY_FULL) || (get32(p + 16) == 0) != (flags == DG_ENTRY_FULL)) {  /* as decode checks it */
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "assemble: not a fragment of a registered segment");
        return NULL;
    }
    PyObject *resyncs = PyList_New(0);
    int rc = resyncs ? assemble(e, s, sender, p, resyncs, now) : -1;
    PyBuffer_Release(&v);
    if (rc < 0) {
        Py_XDECREF(resyncs);
        return NULL;
    }
    PyObject *units = PyList_New(0);  /* [(key, unit)] -> [unit] */
    for (Py_ssize_t i = 0; units && i < PyList_GET_SIZE(resyncs); i++)
        if (PyList_Append(units, PyTuple_GET_ITEM(PyList_GET_ITEM(resyncs, i), 1)) < 0) Py_CLEAR(units);
    Py_DECREF(resyncs);
    return units;
}

/* expire(now_s): drop the partial updates older than the reassembly timeout (Assembler.expire). */
static PyObject *Engine_expire(Engine *e, PyObject *arg) {
    double now_s = PyFloat_AsDouble(arg);
    if (now_s == -1.0 && PyErr_Occurred()) return NULL;
    if (!ready(e)) return NULL;
    partials_expire(e, now_s > 0 ? (uint64_t)(now_s * 1e9) : 0);
    Py_RETURN_NONE;
}

static PyMethodDef Engine_methods[] = {
    {"add", (PyCFunction)Engine_add, METH_VARARGS,
     "add(key, segment_id, base, size, unit, shadow, tags, own, write, address, in_sync): take this segment's "
     "updates with the one bridge at address natively"},
    {"remove", (PyCFunction)Engine_remove, METH_O,
     "remove(key): no longer (before its binding goes); its partial updates are dropped"},
    {"set_assembly", (PyCFunction)Engine_set_assembly, METH_VARARGS,
     "set_assembly(max_updates, max_bytes, timeout_s): the bounds of partial updates, as Assembler's"},
    {"set_mtu", (PyCFunction)Engine_set_mtu, METH_O, "set_mtu(mtu): the largest datagram to send"},
    {"next_seq", (PyCFunction)Engine_next_seq, METH_O, "next_seq(now_us): the sender's next sequence number"},
    {"next_tag", (PyCFunction)Engine_next_tag, METH_NOARGS, "next_tag(): a fresh tag for a unit's content"},
    {"check", (PyCFunction)(void (*)(void))Engine_check, METH_FASTCALL,
     "check(sender, seq, now_us): the replay window's verdict, as ReplayWindow.check"},
    {"commit", (PyCFunction)(void (*)(void))Engine_commit, METH_FASTCALL, "commit(sender, seq): as ReplayWindow.commit"},
    {"forget", (PyCFunction)Engine_forget, METH_O, "forget(sender): as ReplayWindow.forget"},
    {"heard_ns", (PyCFunction)Engine_heard_ns, METH_O,
     "heard_ns((ip, port)): when this path last took a datagram from there (monotonic ns, 0: never)"},
    {"counts", (PyCFunction)Engine_counts, METH_NOARGS, "the counters of this path"},
    {"run", (PyCFunction)(void (*)(void))Engine_run, METH_FASTCALL,
     "run(spin_cap_ns, adaptive, timeout_s, doorbell_fd, fds): serve until Python is needed"},
    {"assemble", (PyCFunction)(void (*)(void))Engine_assemble, METH_FASTCALL,
     "assemble(sender, entry, now_s): a fragment Python took, into this path's assembler: the units to RESYNC"},
    {"expire", (PyCFunction)Engine_expire, METH_O,
     "expire(now_s): drop the partial updates older than the reassembly timeout (time.monotonic())"},
    {"takes", (PyCFunction)(void (*)(void))Engine_takes, METH_FASTCALL,
     "takes(data, (ip, port)): whether run() would take this datagram itself (for the tests)"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.BridgeEngine", .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init, .tp_dealloc = native_dealloc,
    .tp_traverse = (traverseproc)Engine_traverse, .tp_clear = (inquiry)Engine_clear,
    .tp_methods = Engine_methods,
    .tp_doc = "BridgeEngine(fifo, fd, sender, tag, max_age_us, mtu, key): the bridge's native data path",
};

/* For the tests: the MAC of data under key, as datagram._mac. */
static PyObject *n_bridge_mac(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "bridge_mac(key: bytes, data)");
        return NULL;
    }
    blake2b_state S;
    if (mac_init(&S, (const unsigned char *)PyBytes_AS_STRING(args[0]), (size_t)PyBytes_GET_SIZE(args[0])) < 0) {
        PyErr_SetString(PyExc_ValueError, "bridge_mac: a key is 1 to 64 bytes");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(args[1], &v, PyBUF_SIMPLE) < 0) return NULL;
    unsigned char out[DG_MAC];
    mac_of(&S, v.buf, (size_t)v.len, out);
    PyBuffer_Release(&v);
    return PyBytes_FromStringAndSize((const char *)out, DG_MAC);
}

static PyMethodDef engine_functions[] = {
    {"bridge_mac", (PyCFunction)(void (*)(void))n_bridge_mac, METH_FASTCALL,
     "bridge_mac(key, data): the bridge datagrams' MAC of data (keyed, personalised BLAKE2b, 16 bytes)"},
    {NULL, NULL, 0, NULL},
};

int native_add_net_engine(PyObject *module) {
    return native_add(module, engine_functions, (PyTypeObject *const[]){&EngineType, NULL});
}
