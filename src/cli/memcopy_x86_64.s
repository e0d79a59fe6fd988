# memcpy and memmove for x86_64, in general-purpose registers and `rep movsq` only, for the
# static musl binary (src/memcopy.rs says why). System V calling convention: rdi = destination,
# rsi = source, rdx = byte count; rax returns the destination. Intel syntax (Rust's default
# for global_asm!). No stack use, no callee-saved registers touched.
#
# No SSE on purpose: tract's AVX kernels leave the upper halves of the vector registers dirty,
# and on the CPUs we measured every legacy-SSE instruction after them paid a transition
# penalty; an SSE2 version made the digits MLP 18% slower while it made the CNN 2x faster.
#
#   0..=32 bytes    a few overlapping loads, then the stores: any overlap is safe because
#                   every byte is loaded before the first store (memmove shares this path).
#   33..=64         memcpy only: the first 32 bytes, then the last 32.
#   65..=511        memcpy only: 32 bytes per loop turn, then the last 32 bytes.
#   512 and more    `rep movsq` (what musl does for every size), then the last 8 bytes.
#   memmove above 32 bytes with overlapping ranges: `rep movsq` forwards, or backwards when
#   the destination starts inside the source, as musl does.

    .text

    # Copies 32 bytes from the address `from` to `to` through four registers, loads first.
    .macro COPY_32 from, to
    mov rcx, [\from]
    mov r8, [\from + 8]
    mov r9, [\from + 16]
    mov r10, [\from + 24]
    mov [\to], rcx
    mov [\to + 8], r8
    mov [\to + 16], r9
    mov [\to + 24], r10
    .endm

    .p2align 4
    .globl streamtract_memcpy
    .type streamtract_memcpy,@function
streamtract_memcpy:
    mov rax, rdi
    cmp rdx, 32
    jbe .Lst_up_to_32
.Lst_disjoint_over_32:
    cmp rdx, 64
    ja .Lst_disjoint_over_64
    COPY_32 rsi, rdi
    COPY_32 rsi+rdx-32, rdi+rdx-32
    ret
.Lst_disjoint_over_64:
    cmp rdx, 512
    jae .Lst_forward_rep
    lea r11, [rsi + rdx - 32]
    lea rdx, [rdi + rdx - 32]
.Lst_forward_loop:
    COPY_32 rsi, rdi
    add rsi, 32
    add rdi, 32
    cmp rsi, r11
    jb .Lst_forward_loop
    COPY_32 r11, rdx
    ret

.Lst_up_to_32:
    cmp rdx, 16
    jb .Lst_under_16
    mov rcx, [rsi]
    mov r8, [rsi + 8]
    mov r9, [rsi + rdx - 16]
    mov r10, [rsi + rdx - 8]
    mov [rdi], rcx
    mov [rdi + 8], r8
    mov [rdi + rdx - 16], r9
    mov [rdi + rdx - 8], r10
    ret
.Lst_under_16:
    cmp rdx, 8
    jb .Lst_under_8
    mov rcx, [rsi]
    mov r8, [rsi + rdx - 8]
    mov [rdi], rcx
    mov [rdi + rdx - 8], r8
    ret
.Lst_under_8:
    cmp rdx, 4
    jb .Lst_under_4
    mov ecx, [rsi]
    mov r8d, [rsi + rdx - 4]
    mov [rdi], ecx
    mov [rdi + rdx - 4], r8d
    ret
.Lst_under_4:
    # 1, 2 or 3 bytes: the first, the last and the middle one cover them all.
    test rdx, rdx
    jz .Lst_return
    mov r9, rdx
    shr r9, 1
    movzx ecx, byte ptr [rsi]
    movzx r8d, byte ptr [rsi + rdx - 1]
    movzx r10d, byte ptr [rsi + r9]
    mov [rdi], cl
    mov [rdi + rdx - 1], r8b
    mov [rdi + r9], r10b
.Lst_return:
    ret

    # Front to back in 8-byte steps; safe for memmove when the destination starts before the
    # source. The last 8 bytes are loaded before the first store and stored last.
.Lst_forward_rep:
    mov r8, [rsi + rdx - 8]
    lea r9, [rdi + rdx - 8]
    mov rcx, rdx
    shr rcx, 3
    rep movsq
    mov [r9], r8
    ret
    .size streamtract_memcpy, . - streamtract_memcpy

    .p2align 4
    .globl streamtract_memmove
    .type streamtract_memmove,@function
streamtract_memmove:
    mov rax, rdi
    cmp rdx, 32
    jbe .Lst_up_to_32
    # (destination - source) and (source - destination), unsigned: the ranges are disjoint
    # when both are at least the count; the first is below it exactly when the destination
    # starts inside the source.
    mov rcx, rdi
    sub rcx, rsi
    cmp rcx, rdx
    jb .Lst_backward_rep
    mov r8, rsi
    sub r8, rdi
    cmp r8, rdx
    jae .Lst_disjoint_over_32
    jmp .Lst_forward_rep
.Lst_backward_rep:
    test rcx, rcx
    jz .Lst_return
    # Back to front in 8-byte steps (direction flag set, and cleared again as the ABI
    # requires); the first 8 bytes are loaded before the first store and stored last.
    mov r8, [rsi]
    lea rsi, [rsi + rdx - 8]
    lea rdi, [rdi + rdx - 8]
    mov rcx, rdx
    shr rcx, 3
    std
    rep movsq
    cld
    mov [rax], r8
    ret
    .size streamtract_memmove, . - streamtract_memmove
