/*
 * boot.S: the boot-sector guest of examples/qemu's tests.
 *
 * It enables A20, enters flat 32-bit protected mode and then counts for
 * ever. Each iteration increments the counter (kept in %ebx and at
 * 0x500000) and
 *   - writes it into two dwords (offsets 0 and 2048) of each of the 1024
 *     pages at 0x100000..0x4fffff: small changes, ideal XBZRLE deltas;
 *   - fills every dword of the 64 pages at 0x600000..0x63ffff with
 *     counter * 0x9e3779b1: every byte changes, XBZRLE overflows.
 * It prints "BOOT\n" once to the ISA debug port 0xe9, then the counter as
 * eight hex digits and a newline every 64 iterations.
 *
 * Build (guest.bin is committed beside this file and embedded by qemutest.go):
 *   as --32 -o boot.o boot.S
 *   ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o guest.bin boot.o
 */
	.code16
	.globl _start
_start:
	cli
	xorw	%ax, %ax
	movw	%ax, %ds
	movw	%ax, %ss
	movw	$0x7c00, %sp
	inb	$0x92, %al		/* fast A20 */
	orb	$2, %al
	andb	$0xfe, %al
	outb	%al, $0x92
	lgdt	gdtdesc
	movl	%cr0, %eax
	orl	$1, %eax
	movl	%eax, %cr0
	ljmp	$0x08, $pm

	.code32
pm:
	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movl	$0x7c00, %esp
	cld
	movl	$msg, %esi
1:	lodsb
	testb	%al, %al
	jz	2f
	outb	%al, $0xe9
	jmp	1b
2:	xorl	%ebx, %ebx

count:
	incl	%ebx
	movl	%ebx, 0x500000
	movl	$0x100000, %edi
	movl	$1024, %ecx
3:	movl	%ebx, (%edi)
	movl	%ebx, 2048(%edi)
	addl	$4096, %edi
	loop	3b
	imull	$0x9e3779b1, %ebx, %eax
	movl	$0x600000, %edi
	movl	$(64 * 1024), %ecx
	rep stosl
	testl	$63, %ebx
	jnz	count
	movl	$8, %ecx		/* print %ebx in hex */
	movl	%ebx, %edx
4:	roll	$4, %edx
	movb	%dl, %al
	andb	$15, %al
	addb	$'0', %al
	cmpb	$'9', %al
	jbe	5f
	addb	$('a' - '9' - 1), %al
5:	outb	%al, $0xe9
	loop	4b
	movb	$'\n', %al
	outb	%al, $0xe9
	jmp	count

msg:	.asciz	"BOOT\n"
	.p2align 3
gdt:	.quad	0
	.quad	0x00cf9a000000ffff	/* 0x08: code, flat 4 GiB */
	.quad	0x00cf92000000ffff	/* 0x10: data, flat 4 GiB */
gdtdesc:
	.word	gdtdesc - gdt - 1
	.long	gdt

	.org	510
	.byte	0x55, 0xaa
