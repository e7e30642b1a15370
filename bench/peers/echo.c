/* The floor of the UDP socket path: a recvmmsg/sendmmsg loop that answers every datagram with
 * the same bytes and the QR bit set, doing no DNS work at all.  Whatever a server spends per
 * query above this is its own work; nothing on this path can cost less.
 *
 * Built by bench/peers (gcc -O2) into its work directory; run: echo PORT.  SIGTERM stops it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define BUFSZ 4096

static volatile sig_atomic_t stopping;

static void on_term(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s PORT\n", argv[0]);
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
		perror("bind");
		return 1;
	}
	/* No SA_RESTART: SIGTERM interrupts recvmmsg and the loop ends. */
	struct sigaction sa = {.sa_handler = on_term};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	static unsigned char bufs[BATCH][BUFSZ];
	static struct iovec iov[BATCH];
	static struct sockaddr_in peers[BATCH];
	static struct mmsghdr msgs[BATCH];
	while (!stopping) {
		for (int i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = BUFSZ;
			memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
			msgs[i].msg_hdr.msg_name = &peers[i];
			msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
		if (n <= 0)
			continue;
		for (int i = 0; i < n; i++) {
			iov[i].iov_len = msgs[i].msg_len;
			if (msgs[i].msg_len >= 12)
				bufs[i][2] |= 0x80; /* QR: a response, so dnsperf counts it */
		}
		sendmmsg(fd, msgs, n, 0);
	}
	close(fd);
	return 0;
}
