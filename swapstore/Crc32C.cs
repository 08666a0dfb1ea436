using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;

namespace Lab.Swapstore;

/// <summary>
/// CRC-32C (Castagnoli), the checksum of iSCSI/ext4/Btrfs. System.IO.Hashing is a NuGet package,
/// not part of the shared framework, so we carry our own: hardware CRC32 instructions when the CPU
/// has them (SSE4.2 / ARMv8 CRC), a slicing table otherwise.
/// </summary>
public static class Crc32C
{
    const uint Poly = 0x82F63B78u; // reflected Castagnoli polynomial

    static readonly uint[] Table = BuildTable();

    static uint[] BuildTable()
    {
        // 8 tables of 256 for slicing-by-8 in the software path.
        var t = new uint[8 * 256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? (c >> 1) ^ Poly : c >> 1;
            t[i] = c;
        }
        for (int i = 0; i < 256; i++)
            for (int s = 1; s < 8; s++)
                t[s * 256 + i] = (t[(s - 1) * 256 + i] >> 8) ^ t[t[(s - 1) * 256 + i] & 0xFF];
        return t;
    }

    /// <summary>CRC-32C of <paramref name="data"/> (standard: initial and final XOR with ~0).</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => ~Update(~0u, data);

    /// <summary>Continues a running (non-finalised) CRC. Start with ~0u, finish with ~.</summary>
    public static uint Update(uint crc, ReadOnlySpan<byte> data)
    {
        if (Sse42.X64.IsSupported)
        {
            ulong c = crc;
            var words = MemoryMarshal.Cast<byte, ulong>(data);
            foreach (ulong w in words) c = Sse42.X64.Crc32(c, w);
            crc = (uint)c;
            foreach (byte b in data[(words.Length * 8)..]) crc = Sse42.Crc32(crc, b);
            return crc;
        }
        if (Crc32.Arm64.IsSupported)
        {
            var words = MemoryMarshal.Cast<byte, ulong>(data);
            foreach (ulong w in words) crc = Crc32.Arm64.ComputeCrc32C(crc, w);
            foreach (byte b in data[(words.Length * 8)..]) crc = Crc32.ComputeCrc32C(crc, b);
            return crc;
        }
        return UpdateSoftware(crc, data);
    }

    internal static uint UpdateSoftware(uint crc, ReadOnlySpan<byte> data)
    {
        var t = Table;
        while (data.Length >= 8)
        {
            uint lo = BinaryPrimitives.ReadUInt32LittleEndian(data) ^ crc;
            uint hi = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
            crc = t[7 * 256 + (lo & 0xFF)] ^ t[6 * 256 + ((lo >> 8) & 0xFF)] ^
                  t[5 * 256 + ((lo >> 16) & 0xFF)] ^ t[4 * 256 + (lo >> 24)] ^
                  t[3 * 256 + (hi & 0xFF)] ^ t[2 * 256 + ((hi >> 8) & 0xFF)] ^
                  t[1 * 256 + ((hi >> 16) & 0xFF)] ^ t[hi >> 24];
            data = data[8..];
        }
        foreach (byte b in data) crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF];
        return crc;
    }

    // Operator "append 1024 zero bytes" on the CRC register, as four byte-indexed tables: lets a
    // 4 KiB page be checksummed as four independent 1 KiB lanes (the CRC instruction has a latency
    // of 3 cycles but a throughput of 1, so four lanes run ~3x faster) and combined exactly.
    const int Lane = 1024;
    static readonly uint[] Shift1K = BuildShift(Lane);

    static uint[] BuildShift(int zeroBytes)
    {
        Span<byte> zeros = stackalloc byte[zeroBytes];
        zeros.Clear();
        var basis = new uint[32];
        for (int bit = 0; bit < 32; bit++) basis[bit] = UpdateSoftware(1u << bit, zeros);
        var t = new uint[4 * 256];
        for (int b = 0; b < 4; b++)
            for (int v = 0; v < 256; v++)
            {
                uint r = 0;
                for (int k = 0; k < 8; k++) if ((v & (1 << k)) != 0) r ^= basis[b * 8 + k];
                t[b * 256 + v] = r;
            }
        return t;
    }

    static uint ShiftLane(uint reg)
    {
        var t = Shift1K;
        return t[reg & 0xFF] ^ t[256 + ((reg >> 8) & 0xFF)] ^ t[512 + ((reg >> 16) & 0xFF)] ^ t[768 + (reg >> 24)];
    }

    /// <summary>Register update over exactly 4096 bytes, four lanes at once (hardware CRC only).</summary>
    static uint UpdatePage(uint crc, ReadOnlySpan<byte> page)
    {
        var w = MemoryMarshal.Cast<byte, ulong>(page);
        const int n = Lane / 8;
        ulong a = crc, b = 0, c = 0, d = 0;
        for (int i = 0; i < n; i++)
        {
            a = Sse42.X64.Crc32(a, w[i]);
            b = Sse42.X64.Crc32(b, w[n + i]);
            c = Sse42.X64.Crc32(c, w[2 * n + i]);
            d = Sse42.X64.Crc32(d, w[3 * n + i]);
        }
        // reg(A||B) = shift_len(B)(reg(A)) ^ reg(B, from 0): linearity of the CRC register.
        return ShiftLane(ShiftLane(ShiftLane((uint)a) ^ (uint)b) ^ (uint)c) ^ (uint)d;
    }

    /// <summary>
    /// The swap store's per-slot checksum: CRC-32C over the page bytes followed by the slot number
    /// (8 bytes, little-endian). Folding the slot in catches a page stored under the wrong slot,
    /// not only flipped bits.
    /// </summary>
    public static uint SlotChecksum(long slot, ReadOnlySpan<byte> page)
    {
        Span<byte> key = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(key, slot);
        uint reg = page.Length == 4 * Lane && Sse42.X64.IsSupported ? UpdatePage(~0u, page) : Update(~0u, page);
        return ~Update(reg, key);
    }
}
