/*
 * A 2-way persistent-memory range whose two NVDIMMs contribute 256 MiB and 512 MiB:
 * valid ACPI, but nvemu's interleave sets need equal members, so discovery reports it cannot model it.
 */
[0004]                          Signature : "NFIT"
[0004]                       Table Length : 00000000
[0001]                           Revision : 01
[0001]                           Checksum : 00
[0006]                             Oem ID : "NVTEST"
[0008]                       Oem Table ID : "UNEQUAL "
[0004]                       Oem Revision : 00000001
[0004]                    Asl Compiler ID : "INTL"
[0004]              Asl Compiler Revision : 00000000

[0004]                           Reserved : 00000000

[0002]                      Subtable Type : 0000 [System Physical Address Range]
[0002]                             Length : 0000

[0002]                        Range Index : 0001
[0002]              Flags (decoded below) : 0004
                Add/Online Operation Only : 0
                   Proximity Domain Valid : 0
                    Location Cookie Valid : 1
[0004]                           Reserved : 00000000
[0004]                   Proximity Domain : 00000000
[0016]                   Region Type GUID : 66F0D379-B4F3-4074-AC43-0D3318B78CDB
[0008]                 Address Range Base : 0000000100000000
[0008]               Address Range Length : 0000000030000000
[0008]               Memory Map Attribute : 0000000000008008
[0008]                    Location Cookie : 4E56454D55000001

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000000
[0002]                        Physical Id : 0000
[0002]                          Region Id : 0000
[0002]                        Range Index : 0001
[0002]               Control Region Index : 0001
[0008]                        Region Size : 0000000010000000
[0008]                      Region Offset : 0000000000000000
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0000
[0002]                    Interleave Ways : 0002
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000100
[0002]                        Physical Id : 0001
[0002]                          Region Id : 0000
[0002]                        Range Index : 0001
[0002]               Control Region Index : 0002
[0008]                        Region Size : 0000000020000000
[0008]                      Region Offset : 0000000000001000
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0000
[0002]                    Interleave Ways : 0002
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000000
[0002]                         Hint Count : 0001
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000B0000000

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000100
[0002]                         Hint Count : 0001
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000B0001000

[0002]                      Subtable Type : 0007 [Platform Capabilities]
[0002]                             Length : 0000

[0001]                 Highest Capability : 01
[0003]                           Reserved : 000000
[0004]       Capabilities (decoded below) : 00000003
                    Cache Flush to NVDIMM : 1
                   Memory Flush to NVDIMM : 1
                         Memory Mirroring : 0
[0004]                           Reserved : 00000000
