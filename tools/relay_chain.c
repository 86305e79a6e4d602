/*
 * relay_chain: what a call through two bridges can cost on this machine, without ombm (issue 12, step 1).
 *
 * Four processes as in a call across hosts: client -> relay A -(UDP over the veth)-> relay B -> server,
 * and back. Every leg is a UDP datagram (the local legs on loopback stand in for ombm's shared memory +
 * FIFO + doorbell: one kernel wake-up each when the receiver sleeps, none when it polls). Each process
 * waits by a policy: spin for SPIN_US (recv MSG_DONTWAIT, sched_yield between polls, so a process on
 * the same CPU runs), then block in recv. Driven by tools/relay_chain.py, which makes the namespaces.
 *
 *   relay_chain server PORT SPIN_US                    echo every datagram to its source
 *   relay_chain relay PORT LOCAL_PORT PEER_IP PEER_PORT SPIN_US
 *                                                      from 127.0.0.1:LOCAL_PORT -> PEER; from PEER -> local
 *   relay_chain client IP PORT SPIN_US N CPU           N 32-byte round trips; prints the median in us
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct sockaddr_in addr(const char *ip, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int bound(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = addr("0.0.0.0", port);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    return s;
}

/* spin (non-blocking receive, a sched_yield between polls) for spin_ns, then block */
static ssize_t wait_recv(int s, char *buf, size_t n, struct sockaddr_in *from, uint64_t spin_ns) {
    socklen_t len = sizeof *from;
    if (spin_ns) {
        uint64_t end = now_ns() + spin_ns;
        do {
            ssize_t r = recvfrom(s, buf, n, MSG_DONTWAIT, (struct sockaddr *)from, &len);
            if (r >= 0) return r;
            sched_yield();
        } while (now_ns() < end);
    }
    return recvfrom(s, buf, n, 0, (struct sockaddr *)from, &len);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    char buf[2048];
    struct sockaddr_in from;
    if (argc == 4 && !strcmp(argv[1], "server")) {
        int s = bound(atoi(argv[2]));
        uint64_t spin = strtoull(argv[3], 0, 10) * 1000;
        for (;;) {
            ssize_t r = wait_recv(s, buf, sizeof buf, &from, spin);
            if (r > 0) sendto(s, buf, (size_t)r, 0, (struct sockaddr *)&from, sizeof from);
        }
    }
    if (argc == 7 && !strcmp(argv[1], "relay")) {
        int s = bound(atoi(argv[2]));
        struct sockaddr_in local = addr("127.0.0.1", atoi(argv[3])), peer = addr(argv[4], atoi(argv[5]));
        uint64_t spin = strtoull(argv[6], 0, 10) * 1000;
        for (;;) {
            ssize_t r = wait_recv(s, buf, sizeof buf, &from, spin);
            if (r <= 0) continue;
            struct sockaddr_in *to = from.sin_addr.s_addr == local.sin_addr.s_addr ? &peer : &local;
            if (to == &peer) local.sin_port = from.sin_port;  /* the local end: whoever sent from loopback */
            sendto(s, buf, (size_t)r, 0, (struct sockaddr *)to, sizeof *to);
        }
    }
    if (argc == 7 && !strcmp(argv[1], "client")) {
        int s = bound(atoi(argv[3]) + 1000);
        struct sockaddr_in to = addr(argv[2], atoi(argv[3]));
        uint64_t spin = strtoull(argv[4], 0, 10) * 1000;
        int n = atoi(argv[5]);
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[6]), &set);
        sched_setaffinity(0, sizeof set, &set);
        double *us = calloc((size_t)n, sizeof *us);
        memset(buf, 'x', 32);
        for (int i = -n / 10; i < n; i++) {
            uint64_t t = now_ns();
            sendto(s, buf, 32, 0, (struct sockaddr *)&to, sizeof to);
            if (wait_recv(s, buf, sizeof buf, &from, spin) != 32) { fprintf(stderr, "short\n"); return 1; }
            if (i >= 0) us[i] = (double)(now_ns() - t) / 1e3;
        }
        qsort(us, (size_t)n, sizeof *us, cmp);
        printf("%.1f\n", us[n / 2]);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of relay_chain.c\n");
    return 2;
}
