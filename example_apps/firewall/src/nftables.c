/*
 * The same rules loaded into the kernel's own nf_tables (the benchmark's
 * third baseline, built with -DFW_NFTABLES and a kernel with CONFIG_NF_TABLES):
 * one table, one base chain on the IPv4 PRE_ROUTING hook with the rule file's
 * policy, one rule per rule, sent through netlink in transactions (batches)
 * as the nft tool sends them.  Each rule is what nft 1.0 makes of the same
 * match (checked with nft --debug=netlink): the prefix bytes of an address
 * compared (all four masked if the prefix ends inside a byte), the protocol
 * (meta l4proto where ports follow), a port compared or a range as two
 * compares, a counter, the verdict.
 *
 * The message and attribute numbers are the kernel's ABI, from its
 * include/uapi/linux/netfilter/nf_tables.h and nfnetlink.h (musl has no
 * kernel headers).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fw_rules.h"

#define NETLINK_NETFILTER 12
#define NFNL_SUBSYS_NFTABLES 10
#define NFNL_MSG_BATCH_BEGIN 16
#define NFNL_MSG_BATCH_END 17
#define NFT_MSG_NEWTABLE 0
#define NFT_MSG_NEWCHAIN 3
#define NFT_MSG_NEWRULE 6
#define NFPROTO_IPV4 2
#define NF_INET_PRE_ROUTING 0
#define NFT_REG_VERDICT 0
#define NFT_REG_1 1
#define NFTA_TABLE_NAME 1
#define NFTA_CHAIN_TABLE 1
#define NFTA_CHAIN_NAME 3
#define NFTA_CHAIN_HOOK 4
#define NFTA_CHAIN_POLICY 5
#define NFTA_CHAIN_TYPE 7
#define NFTA_HOOK_HOOKNUM 1
#define NFTA_HOOK_PRIORITY 2
#define NFTA_RULE_TABLE 1
#define NFTA_RULE_CHAIN 2
#define NFTA_RULE_EXPRESSIONS 4
#define NFTA_LIST_ELEM 1
#define NFTA_EXPR_NAME 1
#define NFTA_EXPR_DATA 2
#define NFT_PAYLOAD_NETWORK_HEADER 1
#define NFT_PAYLOAD_TRANSPORT_HEADER 2
#define NFTA_PAYLOAD_DREG 1
#define NFTA_PAYLOAD_BASE 2
#define NFTA_PAYLOAD_OFFSET 3
#define NFTA_PAYLOAD_LEN 4
#define NFTA_META_DREG 1
#define NFTA_META_KEY 2
#define NFT_META_L4PROTO 16
#define NFT_CMP_EQ 0
#define NFT_CMP_LTE 3
#define NFT_CMP_GTE 5
#define NFTA_CMP_SREG 1
#define NFTA_CMP_OP 2
#define NFTA_CMP_DATA 3
#define NFTA_BITWISE_SREG 1
#define NFTA_BITWISE_DREG 2
#define NFTA_BITWISE_LEN 3
#define NFTA_BITWISE_MASK 4
#define NFTA_BITWISE_XOR 5
#define NFTA_IMMEDIATE_DREG 1
#define NFTA_IMMEDIATE_DATA 2
#define NFTA_DATA_VALUE 1
#define NFTA_DATA_VERDICT 2
#define NFTA_VERDICT_CODE 1
#define NLA_F_NESTED (1 << 15)
#define NF_IP_PRI_RAW (-300)
#define RULES_PER_BATCH 256

struct msg {
	unsigned char buf[1 << 17];
	size_t len;
	uint32_t seq;
	uint32_t *last; /* the last message that is not a batch marker */
};

static void *put(struct msg *m, const void *data, size_t len)
{
	void *at = m->buf + m->len;

	memcpy(at, data, len);
	m->len += (len + 3) & ~(size_t)3;
	return at;
}

/* nlattr headers: 16-bit length, 16-bit type */
static uint16_t *attr(struct msg *m, uint16_t type, const void *data, size_t len)
{
	uint16_t head[2] = { (uint16_t)(4 + len), type };
	uint16_t *at = put(m, head, 4);

	if (len)
		put(m, data, len);
	return at;
}

static uint16_t *nest(struct msg *m, uint16_t type)
{
	return attr(m, type | NLA_F_NESTED, NULL, 0);
}

static void end(struct msg *m, uint16_t *at)
{
	at[0] = (uint16_t)(m->buf + m->len - (unsigned char *)at);
}

static void be32(struct msg *m, uint16_t type, uint32_t value)
{
	uint32_t v = htonl(value);

	attr(m, type, &v, 4);
}

static void str(struct msg *m, uint16_t type, const char *s)
{
	attr(m, type, s, strlen(s) + 1);
}

/* nlmsghdr + nfgenmsg; the header's length is set by done() */
static uint32_t *begin(struct msg *m, uint16_t type, uint16_t flags, uint16_t res_id)
{
	uint32_t head[4] = { 0, type | (uint32_t)flags << 16, ++m->seq, 0 };
	unsigned char gen[4] = { NFPROTO_IPV4, 0, (unsigned char)(res_id >> 8),
				 (unsigned char)res_id };
	uint32_t *at = put(m, head, 16);

	if (type == NFNL_MSG_BATCH_BEGIN || type == NFNL_MSG_BATCH_END)
		gen[0] = 0;
	else
		m->last = at;
	put(m, gen, 4);
	return at;
}

static void done(struct msg *m, uint32_t *at)
{
	at[0] = (uint32_t)(m->buf + m->len - (unsigned char *)at);
}

static uint16_t *expr(struct msg *m, const char *name)
{
	uint16_t *elem = nest(m, NFTA_LIST_ELEM);

	str(m, NFTA_EXPR_NAME, name);
	return elem;
}

static void data_value(struct msg *m, uint16_t type, const void *value, size_t len)
{
	uint16_t *d = nest(m, type);

	attr(m, NFTA_DATA_VALUE, value, len);
	end(m, d);
}

static void payload(struct msg *m, uint32_t base, uint32_t offset, uint32_t len)
{
	uint16_t *e = expr(m, "payload"), *d = nest(m, NFTA_EXPR_DATA);

	be32(m, NFTA_PAYLOAD_DREG, NFT_REG_1);
	be32(m, NFTA_PAYLOAD_BASE, base);
	be32(m, NFTA_PAYLOAD_OFFSET, offset);
	be32(m, NFTA_PAYLOAD_LEN, len);
	end(m, d);
	end(m, e);
}

static void cmp(struct msg *m, uint32_t op, const void *value, size_t len)
{
	uint16_t *e = expr(m, "cmp"), *d = nest(m, NFTA_EXPR_DATA);

	be32(m, NFTA_CMP_SREG, NFT_REG_1);
	be32(m, NFTA_CMP_OP, op);
	data_value(m, NFTA_CMP_DATA, value, len);
	end(m, d);
	end(m, e);
}

static void l4proto(struct msg *m)
{
	uint16_t *e = expr(m, "meta"), *d = nest(m, NFTA_EXPR_DATA);

	be32(m, NFTA_META_DREG, NFT_REG_1);
	be32(m, NFTA_META_KEY, NFT_META_L4PROTO);
	end(m, d);
	end(m, e);
}

static void mask(struct msg *m, const void *bits, uint32_t len)
{
	uint16_t *e = expr(m, "bitwise"), *d = nest(m, NFTA_EXPR_DATA);
	uint32_t xor = 0;

	be32(m, NFTA_BITWISE_SREG, NFT_REG_1);
	be32(m, NFTA_BITWISE_DREG, NFT_REG_1);
	be32(m, NFTA_BITWISE_LEN, len);
	data_value(m, NFTA_BITWISE_MASK, bits, len);
	data_value(m, NFTA_BITWISE_XOR, &xor, len);
	end(m, d);
	end(m, e);
}

/* ip saddr/daddr as nft compiles a prefix: the bytes it covers compared, or
 * all four masked when it ends inside a byte; nothing for any address.
 */
static void address(struct msg *m, uint32_t offset, uint32_t lo, uint32_t span)
{
	uint32_t net = htonl(lo), bits = htonl(~span), len;
	unsigned prefix = 32;

	if (span == 0xffffffffu)
		return;
	while (span >> (32 - prefix))
		prefix--;
	len = prefix % 8 ? 4 : prefix / 8;
	payload(m, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
	if (prefix % 8)
		mask(m, &bits, len);
	cmp(m, NFT_CMP_EQ, &net, len);
}

/* th sport/dport as nft compiles them: a port is one compare, a range two
 * (network byte order compares as numbers do); nothing without a port test.
 */
static void port(struct msg *m, uint32_t offset, uint32_t lo, uint32_t span)
{
	uint16_t from = htons((uint16_t)lo), to = htons((uint16_t)(lo + span));

	if (span > 65535)  /* 0..65536: the rule tests no port */
		return;
	payload(m, NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2);
	if (span) {
		cmp(m, NFT_CMP_GTE, &from, 2);
		cmp(m, NFT_CMP_LTE, &to, 2);
	} else {
		cmp(m, NFT_CMP_EQ, &from, 2);
	}
}

static void verdict(struct msg *m, uint32_t code)
{
	uint16_t *e = expr(m, "immediate"), *d = nest(m, NFTA_EXPR_DATA), *v, *c;

	be32(m, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
	v = nest(m, NFTA_IMMEDIATE_DATA);
	c = nest(m, NFTA_DATA_VERDICT);
	be32(m, NFTA_VERDICT_CODE, code);
	end(m, c);
	end(m, v);
	end(m, d);
	end(m, e);
}

static void rule(struct msg *m, const struct fw_rule *r, unsigned accept)
{
	uint32_t *h = begin(m, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE,
			    0x1 | 0x400 | 0x800 /* REQUEST CREATE APPEND */, 0);
	uint16_t *list;
	unsigned char proto = (unsigned char)r->proto_lo;

	str(m, NFTA_RULE_TABLE, "fw");
	str(m, NFTA_RULE_CHAIN, "input");
	list = nest(m, NFTA_RULE_EXPRESSIONS);
	address(m, 12, r->src_lo, r->src_span);
	address(m, 16, r->dst_lo, r->dst_span);
	if (r->proto_span == 0 && r->sport_span > 65535 && r->dport_span > 65535) {
		payload(m, NFT_PAYLOAD_NETWORK_HEADER, 9, 1); /* ip protocol */
		cmp(m, NFT_CMP_EQ, &proto, 1);
	} else if (r->proto_span == 0) {
		l4proto(m); /* the dependency nft adds for tcp/udp ports */
		cmp(m, NFT_CMP_EQ, &proto, 1);
	}
	port(m, 0, r->sport_lo, r->sport_span);
	port(m, 2, r->dport_lo, r->dport_span);
	end(m, expr(m, "counter"));
	verdict(m, accept ? 1 /* NF_ACCEPT */ : 0 /* NF_DROP */);
	end(m, list);
	done(m, h);
}

/* Send one transaction and read until its last message's acknowledgement (only
 * that one asks for one: an error is reported whatever the flags), or an error.
 */
static int commit(int fd, struct msg *m, char *why, size_t size)
{
	uint32_t last = m->seq;

	m->last[1] |= (uint32_t)0x4 << 16; /* NLM_F_ACK */
	done(m, begin(m, NFNL_MSG_BATCH_END, 0x1, NFNL_SUBSYS_NFTABLES));
	if (send(fd, m->buf, m->len, 0) < 0)
		return snprintf(why, size, "netlink send: %s", strerror(errno));
	m->len = 0;
	for (;;) {
		static unsigned char reply[8192];
		ssize_t n = recv(fd, reply, sizeof(reply), 0);
		unsigned char *p = reply;

		if (n < 0)
			return snprintf(why, size, "netlink recv: %s", strerror(errno));
		while (p + 16 <= reply + n) {
			uint32_t len, seq;
			uint16_t type;
			int32_t err;

			memcpy(&len, p, 4);
			memcpy(&type, p + 4, 2);
			memcpy(&seq, p + 8, 4);
			if (type == 2 /* NLMSG_ERROR */) {
				memcpy(&err, p + 16, 4);
				if (err)
					return snprintf(why, size, "nf_tables refused message %u: %s",
							seq, strerror(-err));
				if (seq == last)
					return 0;
			}
			if (len < 16)
				break;
			p += (len + 3) & ~3u;
		}
	}
}

static uint32_t *batch(struct msg *m)
{
	return begin(m, NFNL_MSG_BATCH_BEGIN, 0x1, NFNL_SUBSYS_NFTABLES);
}

int fw_load_nftables(char *why, size_t size)
{
	static struct msg m;
	static const int big = 1 << 22;
	int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER), err;
	uint32_t *h;
	uint16_t *hook;
	unsigned i;

	if (fd < 0)
		return snprintf(why, size, "netlink socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
	done(&m, batch(&m));
	h = begin(&m, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE, 0x1 | 0x400, 0);
	str(&m, NFTA_TABLE_NAME, "fw");
	done(&m, h);
	h = begin(&m, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN, 0x1 | 0x400, 0);
	str(&m, NFTA_CHAIN_TABLE, "fw");
	str(&m, NFTA_CHAIN_NAME, "input");
	hook = nest(&m, NFTA_CHAIN_HOOK);
	be32(&m, NFTA_HOOK_HOOKNUM, NF_INET_PRE_ROUTING);
	be32(&m, NFTA_HOOK_PRIORITY, (uint32_t)NF_IP_PRI_RAW);
	end(&m, hook);
	be32(&m, NFTA_CHAIN_POLICY, fw_verdict[FW_RULES]);
	str(&m, NFTA_CHAIN_TYPE, "filter");
	done(&m, h);
	for (i = 0; i < FW_RULES; i++) {
		if (i % RULES_PER_BATCH == RULES_PER_BATCH - 1) {
			err = commit(fd, &m, why, size);
			if (err)
				goto out;
			done(&m, batch(&m));
		}
		rule(&m, &fw_table[i], fw_verdict[i]);
	}
	err = commit(fd, &m, why, size);
out:
	close(fd);
	return err;
}
